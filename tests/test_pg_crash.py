"""PostgreSQL killed with -9 while a node writes: no acknowledged item lost, none half-written."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from appliance.cache.pg_store import PgCacheStore
from testkit.postgres import PostgresServer

_WRITER = textwrap.dedent("""
    import sys, time, numpy as np
    from pathlib import Path
    from appliance.cache.pg_store import PgCacheStore
    from appliance.errors import CacheError
    from tests.test_cache_store import make_item
    store = PgCacheStore(sys.argv[1], Path(sys.argv[2]), local_audio_bytes=1 << 30)
    for n in range(100000):
        item = make_item(f"prompt {n}")
        audio = bytes([n % 251]) * (200_000 + n)
        try:
            store.put(item, audio, max_items=40, max_bytes=1 << 30,
                      prompt_vector=np.full(8, n, np.float32), clap_vector=np.full(16, n, np.float32))
        except CacheError as exc:
            print("failed", exc.code, flush=True)
            break
        print(item.key, n, flush=True)  # acknowledged: committed
""")


def test_kill_9_during_writes_loses_no_acknowledged_item_and_leaves_none_half_written(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, own_postgres.dsn, str(tmp_path / "w")],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    assert writer.stdout is not None
    acknowledged: dict[str, int] = {}
    for line in writer.stdout:  # crash after 60 puts, so eviction is also under way
        key, count = line.split()
        acknowledged[key] = int(count)
        if len(acknowledged) == 60:
            own_postgres.kill()
            break
    tail = writer.stdout.read()
    writer.wait(timeout=60)
    for line in tail.splitlines():
        if not line.startswith("failed"):
            key, count = line.split()
            acknowledged[key] = int(count)
    assert "failed cache_unavailable" in tail  # the writer saw the database go, as a typed error

    own_postgres.start()
    store = PgCacheStore(own_postgres.dsn, tmp_path / "reader", local_audio_bytes=1 << 30)
    try:
        report = store.verify()
        assert not report.damaged, json.dumps(report.__dict__)
        present = {item.key: item for item in store.items()}
        newest = sorted(acknowledged, key=acknowledged.__getitem__)[-40:]  # the cap keeps these
        assert set(newest) <= set(present)
        for key in newest:
            n = acknowledged[key]
            assert store.read_audio(present[key]) == bytes([n % 251]) * (200_000 + n)
            assert store.prompt_vector(key) is not None and store.clap_vector(key) is not None
            assert store.lookup_exact(present[key].exact_key) == present[key]
        assert store.totals().items == len(present) <= 40
    finally:
        store.close()
