"""The Quantune paper's experiment rerun on its measured table: the reproduction check.

``quantune_measured_configs.csv`` (from leejaymin/qaunt_xgboost; a copy is in
``tests/data/``; format: :mod:`haq.methods.quantune.table`) holds the ImageNet top-1 of every Quantune configuration of six CNNs
measured by the paper's authors: 48 int8 configurations per model, plus 16 (ShuffleNet)
and 15 (GoogLeNet-slim) "mixed" ones. With it a search is a table look-up, so the paper's
experiment (design §7.4, Fig. 8) can be rerun exactly:

* ``quantune`` - :func:`haq.methods.quantune.surrogate.search_finite` on the target model's rows,
  warm-started with the rows of the *other five* models (the paper's transfer learning;
  the target's own rows are never in the warm start).
* ``random`` - the target's rows in a uniformly random order.
* ``grid`` - a fixed order: the 48 int8 configurations in the R script's
  ``expand.grid`` order (schema fastest, then clipping, granularity, calibration), then the
  mixed ones in the same order (the R script took those in file order).
* ``genetic`` - a binary genetic algorithm in the style of R's ``GA`` package as the
  paper ran it (population 2, single-point crossover with probability 0.8, each
  individual mutated - one random bit flipped - with probability 0.1 or 0.5, one elite,
  linear-rank selection, which for two individuals is uniform). Genome: 2 bits schema,
  1 clipping, 1 granularity, 2 calibration (value 3 reads as 10000, as in the paper), and
  then the index of the model's bit variant (one precision bit for models with mixed rows,
  as in the paper). A genome whose configuration is not in the table (some mixed ones)
  cannot be measured: it gets the lowest fitness and costs no trial.

The same searches run on a table measured on our own model
(:func:`measure_config_table`: every scheme x a few bit patterns through the evaluator).

Every search counts *distinct* configurations measured (a configuration seen before is
looked up for free, which only helps the genetic algorithm) and stops once it has measured
one at least as accurate as ``stop_at`` (default: the target's best).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from haq.errors import ConfigError
from haq.methods.quantune.arch import ArchFeatures
from haq.methods.quantune.space import ConfigEncoder, QuantuneConfig, global_configs
from haq.methods.quantune.surrogate import SurrogateOptions, search_finite
from haq.methods.quantune.table import ReferenceTable
from haq.problem import Measures


def _looker(table: ReferenceTable, model: str, stop_at: float | None):
    """(rows, stop predicate on measured (row, acc) pairs) for one target model."""
    rows = table.rows(model)
    goal = table.best(model) if stop_at is None else stop_at
    return rows, (lambda measured: measured[-1][1] >= goal)


def quantune_on_table(
    table: ReferenceTable,
    model: str,
    rng: np.random.Generator,
    options: SurrogateOptions = SurrogateOptions(),
    use_arch: bool = True,
    stop_at: float | None = None,
    warm_start: bool = True,
) -> list[int]:
    """Table rows Quantune measures on ``model``, in order. ``warm_start``: train the
    surrogate on the other models' rows too (the paper's transfer), else on ``model``'s
    measured rows only. ``use_arch``: include the 8 architecture features."""
    rows, stop = _looker(table, model, stop_at)
    encoder = ConfigEncoder(table.n_layers(model))
    feats = encoder.encode([table.configs[i] for i in rows], table.arch(model, use_arch))
    warm = table.warm_start(model, encoder, use_arch) if warm_start else None
    measured = search_finite(feats, lambda j: float(table.accuracy[rows[j]]), options, rng, warm=warm, stop=stop)
    return [int(rows[j]) for j, _ in measured]


def random_on_table(table: ReferenceTable, model: str, rng: np.random.Generator, stop_at: float | None = None) -> list[int]:
    """Rows of ``model`` in a uniformly random order, up to the first that reaches the goal."""
    rows, stop = _looker(table, model, stop_at)
    return _until(rng.permutation(rows), table, stop)


def grid_order(table: ReferenceTable, model: str) -> list[int]:
    """The grid order of ``model``'s rows: variant by variant (int8 first, see
    :meth:`ReferenceTable.variants`), each in the paper's grid order of the 48 schemes."""
    variants = table.variants(model)
    position = {c: p for p, c in enumerate(global_configs())}

    def key(r: int) -> tuple[int, int]:
        c = table.configs[r]
        return variants.index((c.precision, c.w_bits, c.a_bits)), position[c.global_part]

    return sorted((int(r) for r in table.rows(model)), key=key)


def grid_on_table(table: ReferenceTable, model: str, stop_at: float | None = None) -> list[int]:
    _, stop = _looker(table, model, stop_at)
    return _until(grid_order(table, model), table, stop)


def _until(order, table: ReferenceTable, stop: Callable) -> list[int]:
    measured: list[tuple[int, float]] = []
    for r in order:
        measured.append((int(r), float(table.accuracy[r])))
        if stop(measured):
            break
    return [r for r, _ in measured]


_GENOME_SCHEMA = ("asymmetric", "symmetric", "power-of-two", "symmetric-uint8")  # the R script's coding
_GENOME_CALIBRATION = (1, 1000, 10000, 10000)


def decode_genome(bits: np.ndarray, variants: list[tuple]) -> QuantuneConfig | None:
    """The configuration of a genome: schema 2 bits, clipping 1 (0 = KL), granularity 1
    (0 = per-channel), calibration 2, then the index of the variant (big-endian; for
    the ImageNet table 0 = int8, 1 = mixed, the paper's precision bit). None when the
    variant index is past the model's variants."""
    b = [int(v) for v in bits]
    v = int("".join(map(str, b[6:])) or "0", 2)
    if v >= len(variants):
        return None
    precision, w_bits, a_bits = variants[v]
    return QuantuneConfig(
        calibration=_GENOME_CALIBRATION[2 * b[4] + b[5]],
        clipping=("KL", "max")[b[2]],
        schema=_GENOME_SCHEMA[2 * b[0] + b[1]],
        granularity=("per-channel", "per-tensor")[b[3]],
        precision=precision, w_bits=w_bits, a_bits=a_bits,
    )


def genetic_on_table(
    table: ReferenceTable,
    model: str,
    rng: np.random.Generator,
    mutation: float,
    population: int = 2,
    crossover: float = 0.8,
    stop_at: float | None = None,
    max_generations: int = 100_000,
) -> list[int]:
    """Rows a binary GA measures on ``model`` (see the module docstring). Generations that
    only revisit measured configurations cost nothing; a run that reaches
    ``max_generations`` before the goal returns what it measured."""
    if population < 2 or population % 2:
        raise ConfigError(f"genetic population={population} must be an even number >= 2")
    if not 0 <= mutation <= 1 or not 0 <= crossover <= 1:
        raise ConfigError(f"genetic mutation={mutation} and crossover={crossover} must be in [0, 1]")
    rows, stop = _looker(table, model, stop_at)
    lookup = {table.configs[r]: int(r) for r in rows}
    variants = table.variants(model)
    n_bits = 6 + int(np.ceil(np.log2(len(variants))))
    # genome (as an int, first gene = most significant bit) -> table row, or -1
    row_of = []
    for g in range(2**n_bits):
        config = decode_genome(np.array([(g >> (n_bits - 1 - j)) & 1 for j in range(n_bits)]), variants)
        row_of.append(lookup.get(config, -1) if config is not None else -1)
    measured: list[tuple[int, float]] = []
    known: dict[int, float] = {}  # row -> accuracy, measured rows

    def fit_of(g: int) -> float:
        r = row_of[g]
        return -np.inf if r < 0 else known.get(r, np.nan)

    pop = [int(g) for g in rng.integers(2**n_bits, size=population)]
    block = 1024  # generations whose random draws are made at once (speed only)
    for gen in range(max_generations):
        if gen % block == 0:
            parent_ix = rng.integers(0, population, size=(block, population))  # linear rank: uniform for 2
            cross_u = rng.random((block, population // 2))
            cuts = rng.integers(1, n_bits, size=(block, population // 2))
            mut_u = rng.random((block, population))
            mut_bit = rng.integers(n_bits, size=(block, population))
        t = gen % block
        for g in pop:
            r = row_of[g]
            if r >= 0 and r not in known:
                known[r] = float(table.accuracy[r])
                measured.append((r, known[r]))
                if stop(measured):
                    return [row for row, _ in measured]
        fit = [fit_of(g) for g in pop]
        best = max(range(population), key=lambda i: fit[i])
        elite, elite_fit = pop[best], fit[best]
        parents = [pop[i] for i in parent_ix[t]]
        children = list(parents)
        for p in range(0, population, 2):
            if cross_u[t, p // 2] < crossover:  # single point: head of one parent, tail of the other
                tail = (1 << (n_bits - int(cuts[t, p // 2]))) - 1
                a, b = parents[p], parents[p + 1]
                children[p], children[p + 1] = (a & ~tail) | (b & tail), (b & ~tail) | (a & tail)
        for i in range(population):
            if mut_u[t, i] < mutation:
                children[i] ^= 1 << int(mut_bit[t, i])
        child_fit = [fit_of(g) for g in children]
        rated = [i for i in range(population) if not np.isnan(child_fit[i])]
        worst = min(rated, key=lambda i: child_fit[i]) if rated else 0
        if not child_fit[worst] >= elite_fit:  # elitism: the best survives, replacing the worst child
            children[worst] = elite
        pop = children
    return [row for row, _ in measured]


def trials_to(sequence: list[int], table: ReferenceTable, threshold: float) -> int | None:
    """1-based position of the first row in ``sequence`` at or above ``threshold`` (%)."""
    for n, r in enumerate(sequence, start=1):
        if table.accuracy[r] >= threshold:
            return n
    return None


def measure_config_table(
    evaluator: Measures,
    model: str,
    patterns: Sequence[tuple[Sequence[int], Sequence[int]]],
    arch: ArchFeatures | None = None,
    split: str = "val",
) -> ReferenceTable:
    """Measure every global scheme under every per-layer bit pattern ``(w_bits, a_bits)``
    with ``evaluator`` and return the table, accuracy in %. Calibration sizes follow
    :meth:`QuantuneConfig.calibration_images` on the evaluator's calibration split."""
    available = len(evaluator.calibration_split)
    configs, acc = [], []
    for w, a in patterns:
        for g in global_configs():
            c = QuantuneConfig.with_bits(g, w, a)
            configs.append(c)
            item = (np.asarray(c.w_bits), np.asarray(c.a_bits), c.to_scheme(available))
            acc.append(100.0 * float(evaluator.accuracies([item], split)[0]))
    archs = {model: arch} if arch is not None else {}
    return ReferenceTable((model,) * len(configs), tuple(configs), np.asarray(acc), archs)
