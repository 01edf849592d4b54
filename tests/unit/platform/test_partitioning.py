"""Kafka's murmur2 key partitioner: the Java client's own test vectors, and keys spread over partitions."""

from __future__ import annotations

from lineguard.partitioning import murmur2, partition_for


def signed(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def test_murmur2_matches_the_java_clients_vectors():
    vectors = {"21": -973932308, "foobar": -790332482, "a-little-bit-long-string": -985981536,
               "a-little-bit-longer-string": -1486304829,
               "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, "abc": 479470107}
    for key, expected in vectors.items():
        assert signed(murmur2(key.encode())) == expected, key


def test_partition_for_is_stable_and_in_range():
    spread = [partition_for(f"line{i}", 3) for i in range(1, 13)]
    assert all(0 <= p < 3 for p in spread) and len(set(spread)) == 3
    assert partition_for("line1", 3) == partition_for(b"line1", 3)
