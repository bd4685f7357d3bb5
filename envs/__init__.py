"""Gymnasium environments of haq (installed as ``haq.envs``)."""
