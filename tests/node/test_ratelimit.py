"""Token buckets, failure lockouts and log throttling, on a fake clock."""

from sensing_node.runtime.ratelimit import FailureLockout, LogThrottle, TokenBuckets


def test_token_bucket_allows_burst_then_rate():
    buckets = TokenBuckets(rate=10.0, burst=5.0)
    assert [buckets.allow("a", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert buckets.allow("b", 0.0)  # keys are independent
    assert not buckets.allow("a", 0.05)  # half a token back
    assert buckets.allow("a", 0.2)


def test_token_buckets_are_bounded():
    buckets = TokenBuckets(rate=1.0, burst=1.0, max_keys=100)
    for i in range(1000):
        buckets.allow(str(i), 0.0)
    assert len(buckets._buckets) == 100


def test_lockout_after_limit_within_window_and_release():
    lockout = FailureLockout(limit=3, window_s=60.0, lockout_s=30.0)
    for t in (0.0, 1.0):
        lockout.fail("k", t)
        assert not lockout.locked("k", t)
    lockout.fail("k", 2.0)
    assert lockout.locked("k", 2.0) and lockout.locked("k", 31.9)
    assert not lockout.locked("k", 32.1)
    # Failures spread over more than the window never lock.
    other = FailureLockout(limit=3, window_s=10.0, lockout_s=30.0)
    for t in (0.0, 11.0, 22.0, 33.0):
        other.fail("k", t)
    assert not other.locked("k", 33.0)
    lockout.succeed("k")
    assert not lockout.locked("k", 3.0)


def test_log_throttle_counts_what_it_holds_back():
    throttle = LogThrottle(interval_s=1.0)
    assert throttle.allow("h", 0.0) == 0
    assert throttle.allow("h", 0.1) is None
    assert throttle.allow("h", 0.5) is None
    assert throttle.allow("h", 1.2) == 2
    assert throttle.allow("other", 1.2) == 0
