"""A fleet of two appliances on one private PostgreSQL and one broker (docs/fleet.md).

Through two real ``appliance serve`` processes (tiny generator, the real prompt embedder),
each request a round trip over MQTT 5 on loopback, from publish to reply:
- remote_exact_hit_ms: node B answering, as an exact hit with the clip in the reply
  (``deliver: mqtt``), a prompt that node A generated, the first time B serves it (B
  fetches the clip from the database);
- remote_semantic_hit_ms: the same for a paraphrase (labelled ``match`` pairs of
  bench/data/prompt_pairs_dev.tsv that B's reuse judge accepts), embedding included;
- propagation_p50_ms: from A's reply to the request that generated a clip (A stores it
  before it replies) to B serving it over HTTP (``HEAD /audio/<key>``, polled every ms).

At the store level, on the same database:
- catch_up_100k_s: a node's mirror catching up through the change log after 100,000
  items (metadata, exact index, a 384-d prompt vector and a 512-d CLAP vector each) were
  committed in one transaction, from that commit to the mirror's generation reaching it;
- writes_per_s: one node's committed puts of 1 s clips with both vectors, one after another
  (writes are serialised fleet-wide: near the fleet's ceiling).

Medians on this machine. Last line: remote_exact_hit_ms=… remote_semantic_hit_ms=…
propagation_p50_ms=… catch_up_100k_s=… writes_per_s=…

    .venv/bin/python bench/fleet.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.cache.pg_store import PgCacheStore
from appliance.cache.store import CacheItem
from appliance.cache.sync import FleetCache
from appliance.client import RequestClient
from appliance.models.tiny import build_tiny_tangoflux
from testkit.items import make_item
from testkit.postgres import PostgresServer, fresh_database
from testkit.services import BrokerProcess, ServiceProcess, service_sections

CLIP = os.urandom(176_400)  # 1 s of 44.1 kHz 16-bit stereo
ROUNDS = 20  # requests per appliance-level figure
WRITES = 50
CATCH_UP_ITEMS = 100_000
PAIRS = Path(__file__).parent / "data" / "prompt_pairs_dev.tsv"
MB = 1024 * 1024
rng = np.random.default_rng(0)


def _item(prompt: str) -> CacheItem:
    return make_item(prompt, clap_similarity=0.4)


def _vector(dimension: int) -> np.ndarray:
    v = rng.standard_normal(dimension).astype(np.float32)
    return v / np.linalg.norm(v)


def _ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


class _Node:
    """One appliance and a client of it."""

    def __init__(self, root: Path, name: str, broker: BrokerProcess, models: Path, dsn: str) -> None:
        state = root / name
        state.mkdir()
        sections = service_sections(state, broker, models)
        sections["node"] = {"id": name, "share_group": "fleet"}
        sections["cache"].update({"backend": "postgres", "postgres_dsn": dsn})
        self.service = ServiceProcess.start(state, sections)
        self.broker = broker

    def connect(self) -> None:
        self.service.wait_ready(300)
        self.client = RequestClient(self.broker.settings(), self.service.topics)
        self.client.connect()

    def ask(self, prompt: str) -> tuple[dict[str, Any], float]:
        start = time.perf_counter()
        reply = self.client.request({"prompt": prompt, "duration_s": 1, "steps": 1, "deliver": "mqtt"},
                                    timeout_s=300)
        elapsed = time.perf_counter() - start
        assert reply.body["status"] == "ok", reply.body
        return reply.body, elapsed

    def close(self) -> None:
        self.client.close()
        self.service.stop()


def _match_pairs() -> list[tuple[str, str]]:
    rows = [line.split("\t") for line in PAIRS.read_text().splitlines() if not line.startswith("#")]
    return [(row[1].strip(), row[2].strip()) for row in rows if len(row) == 3 and row[0] == "match"]


def _appliances(root: Path, dsn: str) -> tuple[list[float], list[float], list[float], int]:
    """Exact hits, semantic hits and propagation through two appliance processes."""
    models = root / "models"
    build_tiny_tangoflux(models / "tiny-tangoflux")
    broker = BrokerProcess.start(root / "broker")
    a = _Node(root, "node-a", broker, models, dsn)
    b = _Node(root, "node-b", broker, models, dsn)
    exact, semantic, propagation = [], [], []
    try:
        a.connect()
        b.connect()
        for i in range(ROUNDS):
            made, _ = a.ask(f"a bell ringing {i} times in a courtyard")
            stored = time.perf_counter()
            while b.service.http_bytes(f"/audio/{made['key']}")[0] != 200:
                time.sleep(0.001)
            propagation.append(time.perf_counter() - stored)
        for i in range(ROUNDS):
            made, _ = a.ask(f"a door creaking open {i} times")
            time.sleep(0.5)  # far beyond the propagation time: B holds the item, not its clip
            hit, elapsed = b.ask(f"a door creaking open {i} times")
            assert hit["cached"] and hit["key"] == made["key"], hit
            exact.append(elapsed)
        pairs = _match_pairs()
        for original, paraphrase in pairs[:ROUNDS * 2]:
            a.ask(original)
            time.sleep(0.5)
            hit, elapsed = b.ask(paraphrase)
            if hit["cached"] and hit.get("match_type") == "semantic":
                semantic.append(elapsed)
        return exact, semantic, propagation, min(len(pairs), ROUNDS * 2)
    finally:
        a.close()
        b.close()
        broker.stop()


def _writes(dsn: str, root: Path) -> list[float]:
    store = PgCacheStore(dsn, root / "writer", local_audio_bytes=2048 * MB)
    try:
        samples = []
        for i in range(WRITES):
            item = _item(f"write {i}")
            start = time.perf_counter()
            store.put(item, CLIP, max_items=10**7, max_bytes=10**13,
                      prompt_vector=_vector(384), clap_vector=_vector(512))
            samples.append(time.perf_counter() - start)
        return samples
    finally:
        store.close()


def _catch_up(dsn: str, root: Path) -> float:
    """Commit CATCH_UP_ITEMS items in one transaction (one generation each, as that many puts
    would) and time a running mirror catching up through the change log."""
    mirror = FleetCache(dsn, root / "mirror", local_audio_bytes=64 * MB)
    try:
        while not mirror.connected.is_set():
            time.sleep(0.01)
        with psycopg.connect(dsn) as conn, conn.cursor() as cur:
            row = cur.execute("SELECT generation FROM cache_state FOR UPDATE").fetchone()
            assert row is not None
            generation = int(row[0])
            items = [_item(f"catch-up {i}") for i in range(CATCH_UP_ITEMS)]
            with cur.copy("COPY cache_items FROM STDIN") as copy:
                for item in items:
                    copy.write_row((item.key, Jsonb(asdict(item)), 1, 0.0,
                                    _vector(384).tobytes(), _vector(512).tobytes()))
            with cur.copy("COPY cache_audio FROM STDIN") as copy:
                for item in items:
                    copy.write_row((item.key, b"x"))
            with cur.copy("COPY cache_exact FROM STDIN") as copy:
                for item in items:
                    copy.write_row((item.exact_key, item.key))
            with cur.copy("COPY cache_changes FROM STDIN") as copy:
                for n, item in enumerate(items, start=generation + 1):
                    copy.write_row((n, item.key, "p"))
            target = generation + CATCH_UP_ITEMS
            cur.execute("UPDATE cache_state SET generation = %s, items = items + %s,"
                        " total_bytes = total_bytes + %s", (target, CATCH_UP_ITEMS, CATCH_UP_ITEMS))
            cur.execute("SELECT pg_notify('audiogen_cache', %s)", (str(target),))
            conn.commit()
            committed = time.perf_counter()
        while mirror.generation() < target:
            time.sleep(0.01)
        elapsed = time.perf_counter() - committed
        assert mirror.full_reloads == 1, "caught up through the change log, not a reload"
        assert len(mirror.prompt_vectors()[0]) >= CATCH_UP_ITEMS
        return elapsed
    finally:
        mirror.close()


def main() -> None:
    server = PostgresServer.create()
    databases = fresh_database(server)
    dsn = next(databases)
    root = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    try:
        exact, semantic, propagation, tried = _appliances(root, dsn)
        print(f"semantic hits: {len(semantic)} of {tried} paraphrases")
        writes = _writes(dsn, root)
        catch_up_s = _catch_up(dsn, root)
    finally:
        next(databases, None)  # drops the database
        server.remove()
    print(f"remote_exact_hit_ms={_ms(exact)} remote_semantic_hit_ms={_ms(semantic)} "
          f"propagation_p50_ms={_ms(propagation)} catch_up_100k_s={catch_up_s:.1f} "
          f"writes_per_s={1 / statistics.median(writes):.0f}")


if __name__ == "__main__":
    main()
