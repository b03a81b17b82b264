"""A deterministic synthetic world: users and items with latent tastes, and their interactions.

Why synthetic next to MovieLens: it scales to tens of millions of rows (benchmarks, load
tests), it is fast to make tiny (unit tests), and its ground truth is known, so drift can be
dialled in on purpose.

How the world works (all draws come from one seed, so the same arguments give the same bytes):

- Every user and item has a latent vector (``dim``); items also have a Zipf popularity.
  Ids are assigned in order of appearance: ``initial_fraction`` of the users and items exist
  at ``start``, the rest appear uniformly over the period, so "who exists at time t" is an id
  prefix. Item genres come from the item's latent vector (the genres whose direction it points
  most towards); user age, gender and occupation are drawn from the user's vector as well, so
  features carry signal.
- Each interaction picks an existing user, draws ``candidates`` existing items by popularity
  and keeps the one the user likes most (Gumbel-max over taste · item / temperature); the
  rating grows with that affinity. Interactions are generated in time order, chunk by chunk,
  with bounded memory, so 50M rows take minutes and no more RAM than the latent tables.
- ``user_updates``: that fraction of users gets a second, later row in users.parquet (a
  birthday, maybe a new occupation): FeatureView sources with several versions per entity.
- ``drift`` (0 = stationary): at the end of the period tastes have moved by ``drift`` times a
  typical taste's length along a fixed trend direction (so the items people pick, their genres
  and ratings shift), newly appearing users are up to ``drift`` x 15 years younger and lean to
  other occupations. It
  grows linearly in time, so a model trained on the first weeks and served in the last sees
  drift proportional to the knob.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from recsys_workloads.datasets.layout import (
    EVENT_TIMESTAMP,
    INTERACTIONS_SCHEMA,
    ITEM_ID,
    ITEMS_SCHEMA,
    TIMESTAMP,
    USER_ID,
    USERS_SCHEMA,
    DatasetPaths,
)
from recsys_workloads.datasets.parquet_io import parquet_sink
from recsys_workloads.runtime import BadInputError

GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip
OCCUPATIONS = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other",
    "programmer", "retired", "salesman", "scientist", "student", "technician", "writer",
)  # fmt: skip
GENDERS = ("F", "M")
DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)
#: Rows generated and written per step: bounds memory and does not change the output.
CHUNK_ROWS = 1 << 18

_US_PER_DAY = 86_400 * 1_000_000


@dataclass(frozen=True)
class SyntheticSpec:
    """Every knob of the generator; the output is a pure function of it."""

    users: int = 1_000
    items: int = 500
    interactions: int = 20_000
    dim: int = 16
    seed: int = 0
    start: datetime = DEFAULT_START
    days: float = 30.0
    initial_fraction: float = 0.5
    popularity_exponent: float = 0.8
    candidates: int = 16
    temperature: float = 0.5
    user_updates: float = 0.0
    drift: float = 0.0

    def validate(self) -> None:
        checks: list[tuple[bool, str]] = [
            (self.users >= 1, "users must be >= 1"),
            (self.items >= 1, "items must be >= 1"),
            (self.interactions >= 0, "interactions must be >= 0"),
            (1 <= self.dim <= 256, "dim must be in [1, 256]"),
            (self.days > 0, "days must be > 0"),
            (0 < self.initial_fraction <= 1, "initial_fraction must be in (0, 1]"),
            (self.candidates >= 1, "candidates must be >= 1"),
            (self.temperature > 0, "temperature must be > 0"),
            (0 <= self.user_updates <= 1, "user_updates must be in [0, 1]"),
            (self.drift >= 0, "drift must be >= 0"),
            (self.start.tzinfo is not None, "start must be timezone-aware"),
        ]
        for ok, message in checks:
            if not ok:
                raise BadInputError(f"synthetic dataset: {message}")


@dataclass(frozen=True)
class World:
    """The latent state everything else is drawn from (kept in memory: O(users + items))."""

    spec: SyntheticSpec
    user_taste: NDArray[np.float32]  # (users, dim) float32
    user_appears: NDArray[np.int64]  # (users,) int64 µs offset from start, non-decreasing
    item_vector: NDArray[np.float32]  # (items, dim) float32
    item_appears: NDArray[np.int64]  # (items,) int64 µs offset, non-decreasing
    item_popularity_cdf: NDArray[np.float64]  # (items,) float64, cumulative, not normalised
    genre_directions: NDArray[np.float32]  # (genres, dim) float32
    occupation_directions: NDArray[np.float32]  # (occupations, dim) float32
    trend: NDArray[np.float32]  # (dim,) float32, unit length

    @property
    def period_us(self) -> int:
        return int(self.spec.days * _US_PER_DAY)


def _rng(spec: SyntheticSpec, *stream: int) -> np.random.Generator:
    """An independent, reproducible stream per purpose (and per chunk)."""
    return np.random.default_rng(np.random.SeedSequence([spec.seed, *stream]))


def _appearance(
    rng: np.random.Generator, count: int, initial: float, period: int
) -> NDArray[np.int64]:
    at_start = math.ceil(count * initial)
    later = np.sort(rng.integers(0, period, size=count - at_start, dtype=np.int64))
    return np.concatenate([np.zeros(at_start, dtype=np.int64), later])


def _unit_rows(rng: np.random.Generator, rows: int, dim: int) -> NDArray[np.float32]:
    matrix = rng.standard_normal((rows, dim)).astype(np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.asarray(matrix / np.maximum(norms, np.float32(1e-6)), dtype=np.float32)


def build_world(spec: SyntheticSpec) -> World:
    spec.validate()
    period = int(spec.days * _US_PER_DAY)
    rng = _rng(spec, 0)
    user_taste = rng.standard_normal((spec.users, spec.dim)).astype(np.float32)
    item_vector = rng.standard_normal((spec.items, spec.dim)).astype(np.float32)
    weights = (np.arange(1, spec.items + 1, dtype=np.float64)) ** -spec.popularity_exponent
    rng.shuffle(weights)
    return World(
        spec=spec,
        user_taste=user_taste,
        user_appears=_appearance(rng, spec.users, spec.initial_fraction, period),
        item_vector=item_vector,
        item_appears=_appearance(rng, spec.items, spec.initial_fraction, period),
        item_popularity_cdf=np.cumsum(weights),
        genre_directions=_unit_rows(rng, len(GENRES), spec.dim),
        occupation_directions=_unit_rows(rng, len(OCCUPATIONS), spec.dim),
        trend=_unit_rows(rng, 1, spec.dim)[0],
    )


def _timestamps(offsets_us: NDArray[np.int64], start: datetime) -> pa.Array:
    base = int(start.timestamp() * 1_000_000)
    return pa.array(offsets_us + base, type=pa.int64()).cast(TIMESTAMP)


def _dictionary(codes: NDArray[np.integer[Any]], names: tuple[str, ...]) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(names)).cast(
        pa.string()
    )


def _gumbel_argmax(rng: np.random.Generator, logits: NDArray[np.float32]) -> NDArray[np.int64]:
    noise = -np.log(-np.log(rng.random(logits.shape, dtype=np.float32) + np.float32(1e-12)))
    return np.asarray(np.argmax(logits + noise, axis=-1), dtype=np.int64)


def user_rows(world: World, lo: int, hi: int) -> pa.Table:
    """Users ``[lo, hi)`` as they first appear, plus their later updates (``user_updates``)."""
    spec = world.spec
    rng = _rng(spec, 1, lo)
    ids = np.arange(lo, hi, dtype=np.int64)
    taste = world.user_taste[lo:hi]
    appears = world.user_appears[lo:hi]
    progress = (appears / world.period_us).astype(np.float32)
    shift = np.float32(spec.drift) * progress
    age_signal = np.tanh(taste[:, 0]) * 10.0
    age = np.clip(35.0 + age_signal + rng.normal(0, 8, size=len(ids)) - 15.0 * shift, 13, 90)
    gender = (taste[:, 1] + rng.normal(0, 0.5, size=len(ids)) > 0).astype(np.int32)
    occ_logits = taste @ world.occupation_directions.T
    occ_logits[:, : len(OCCUPATIONS) // 3] += 3.0 * shift[:, None]
    occupation = _gumbel_argmax(rng, occ_logits)
    tables = [
        pa.table(
            {
                USER_ID: ids,
                EVENT_TIMESTAMP: _timestamps(appears, spec.start),
                "age": age.astype(np.int32),
                "gender": _dictionary(gender, GENDERS),
                "occupation": _dictionary(occupation, OCCUPATIONS),
            }
        )
    ]
    updated = rng.random(len(ids)) < spec.user_updates
    if updated.any():
        n = int(updated.sum())
        later = appears[updated] + (rng.random(n) * (world.period_us - appears[updated])).astype(
            np.int64
        )
        moved = rng.random(n) < 0.3
        new_occ = np.where(moved, rng.integers(0, len(OCCUPATIONS), size=n), occupation[updated])
        tables.append(
            pa.table(
                {
                    USER_ID: ids[updated],
                    EVENT_TIMESTAMP: _timestamps(
                        np.minimum(later, world.period_us - 1), spec.start
                    ),
                    "age": (age[updated] + 1).astype(np.int32),
                    "gender": _dictionary(gender[updated], GENDERS),
                    "occupation": _dictionary(new_occ, OCCUPATIONS),
                }
            )
        )
    return pa.concat_tables(tables)


def item_rows(world: World, lo: int, hi: int) -> pa.Table:
    """Items ``[lo, hi)``: genres from their latent direction, release year near appearance."""
    spec = world.spec
    rng = _rng(spec, 2, lo)
    vectors = world.item_vector[lo:hi]
    appears = world.item_appears[lo:hi]
    affinity = vectors @ world.genre_directions.T
    count = rng.integers(1, 4, size=len(vectors))
    ranked = np.argsort(-affinity, axis=1)
    keep = np.arange(len(GENRES))[None, :] < count[:, None]
    flat = ranked[keep]  # row-major: each item's top `count` genres, in order
    offsets = np.concatenate([[0], np.cumsum(count)]).astype(np.int32)
    genres = pa.ListArray.from_arrays(pa.array(offsets), _dictionary(flat, GENRES))
    year_now = spec.start.year
    release = year_now - rng.geometric(0.15, size=len(vectors)) + 1
    release = np.where(appears > 0, year_now, release)
    return pa.table(
        {
            ITEM_ID: np.arange(lo, hi, dtype=np.int64),
            EVENT_TIMESTAMP: _timestamps(appears, spec.start),
            "genres": genres,
            "release_year": release.astype(np.int32),
        }
    )


def interaction_rows(world: World, chunk: int, rows: int) -> pa.Table:
    """Chunk ``chunk`` of the interactions: ``rows`` events in its slice of the period."""
    spec = world.spec
    rng = _rng(spec, 3, chunk)
    total_chunks = max(1, math.ceil(spec.interactions / CHUNK_ROWS))
    span = world.period_us / total_chunks
    times = np.sort(rng.integers(int(chunk * span), int((chunk + 1) * span), size=rows))
    # Who exists at each event: ids are in order of appearance, so it is a prefix.
    users_alive = np.maximum(np.searchsorted(world.user_appears, times, side="right"), 1)
    items_alive = np.maximum(np.searchsorted(world.item_appears, times, side="right"), 1)
    user = (rng.random(rows) * users_alive).astype(np.int64)
    limit = world.item_popularity_cdf[items_alive - 1]
    draws = rng.random((rows, spec.candidates)) * limit[:, None]
    candidates = np.searchsorted(world.item_popularity_cdf, draws, side="right").astype(np.int64)
    candidates = np.minimum(candidates, (items_alive - 1)[:, None])
    progress = (times / world.period_us).astype(np.float32)
    # drift 1 moves every taste by a typical taste's length (sqrt(dim)) along the trend.
    reach = np.float32(spec.drift * math.sqrt(spec.dim)) * progress
    taste = world.user_taste[user] + reach[:, None] * world.trend
    affinity = np.einsum("rd,rcd->rc", taste, world.item_vector[candidates]) / np.float32(
        math.sqrt(spec.dim)
    )
    pick = _gumbel_argmax(rng, affinity / np.float32(spec.temperature))
    item = candidates[np.arange(rows), pick]
    score = affinity[np.arange(rows), pick]
    rating = np.clip(np.rint(3.0 + 1.5 * score + rng.normal(0, 0.7, size=rows)), 1, 5)
    return pa.table(
        {
            USER_ID: user,
            ITEM_ID: item,
            "rating": rating.astype(np.float32),
            EVENT_TIMESTAMP: _timestamps(times, spec.start),
        }
    )


def write_dataset(
    out: str,
    *,
    spec: SyntheticSpec | None = None,
    storage_options: dict[str, Any] | None = None,
    **knobs: Any,
) -> DatasetPaths:
    """Generate the world described by ``spec`` (or by ``knobs``) into the layout under ``out``."""
    spec = spec or SyntheticSpec(**knobs)
    world = build_world(spec)
    paths = DatasetPaths.under(out)
    with parquet_sink(paths.users, USERS_SCHEMA, storage_options) as sink:
        for lo in range(0, spec.users, CHUNK_ROWS):
            sink.write(user_rows(world, lo, min(lo + CHUNK_ROWS, spec.users)))
    with parquet_sink(paths.items, ITEMS_SCHEMA, storage_options) as sink:
        for lo in range(0, spec.items, CHUNK_ROWS):
            sink.write(item_rows(world, lo, min(lo + CHUNK_ROWS, spec.items)))
    with parquet_sink(paths.interactions, INTERACTIONS_SCHEMA, storage_options) as sink:
        for chunk, lo in enumerate(range(0, spec.interactions, CHUNK_ROWS)):
            sink.write(interaction_rows(world, chunk, min(CHUNK_ROWS, spec.interactions - lo)))
        if spec.interactions == 0:
            sink.write(INTERACTIONS_SCHEMA.empty_table())
    return paths
