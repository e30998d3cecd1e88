"""bytea or large objects for a clip in PostgreSQL: write (one committed transaction) and read
times of a 1.7 MB clip (10 s of 44.1 kHz 16-bit stereo WAV is 1.76 MB), on a private server.

Last line: bytea_write_ms=… bytea_read_ms=… lo_write_ms=… lo_read_ms=… (medians).
"""

from __future__ import annotations

import os
import statistics
import time

import psycopg

from testkit.postgres import PostgresServer

CLIP = os.urandom(1_764_000)  # random bytes: WAV audio barely compresses either
ROUNDS = 30


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def main() -> None:
    server = PostgresServer.create()
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE a (k int PRIMARY KEY, data bytea NOT NULL)")
            conn.execute("ALTER TABLE a ALTER COLUMN data SET STORAGE EXTERNAL")
            conn.execute("CREATE TABLE l (k int PRIMARY KEY, oid oid NOT NULL)")
            bw, br, lw, lr = [], [], [], []
            for k in range(ROUNDS):
                t = time.perf_counter()
                with conn.transaction():
                    conn.execute("INSERT INTO a VALUES (%s, %s)", (k, CLIP))
                bw.append(time.perf_counter() - t)
                t = time.perf_counter()
                row = conn.execute("SELECT data FROM a WHERE k = %s", (k,)).fetchone()
                br.append(time.perf_counter() - t)
                assert row is not None and bytes(row[0]) == CLIP
                t = time.perf_counter()
                with conn.transaction():
                    conn.execute("INSERT INTO l VALUES (%s, lo_from_bytea(0, %s))", (k, CLIP))
                lw.append(time.perf_counter() - t)
                t = time.perf_counter()
                row = conn.execute("SELECT lo_get(oid) FROM l WHERE k = %s", (k,)).fetchone()
                lr.append(time.perf_counter() - t)
                assert row is not None and bytes(row[0]) == CLIP
    finally:
        server.remove()
    print(f"bytea_write_ms={_median_ms(bw)} bytea_read_ms={_median_ms(br)} "
          f"lo_write_ms={_median_ms(lw)} lo_read_ms={_median_ms(lr)}")


if __name__ == "__main__":
    main()
