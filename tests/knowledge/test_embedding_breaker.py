"""The openai provider when its server is slow or down: bounded waits per kind of caller,
the circuit breaker, and which error says "retry later" and which "this input is bad"."""

import logging
import pickle
import threading
import time

import pytest

from knowledge import embeddings
from knowledge.embeddings import EmbeddingError, EmbeddingUnavailable, OpenAIProvider
from tests.fake_openai import Clock

TIMEOUT = 0.3  # the query and interactive timeouts in these tests
# A hang guard, not a benchmark (machines under load are slow): well above TIMEOUT, below
# the background timeout (5 s) of these providers.
BOUND = 4


@pytest.fixture
def breaker_settings(settings):
    settings.EMBEDDING_BREAKER_FAILURES = 2
    settings.EMBEDDING_BREAKER_SECONDS = 60
    return settings


def _provider(fake, **kwargs):
    options = {
        "model": "m", "dimensions": 32, "base_url": fake.base_url, "max_retries": 3, "timeout": 5.0,
        "query_timeout": TIMEOUT, "query_max_retries": 0, "interactive_timeout": TIMEOUT, "interactive_max_retries": 0,
    }  # fmt: skip
    return OpenAIProvider(**{**options, **kwargs})


def _timed(call):
    started = time.monotonic()
    try:
        call()
    except EmbeddingUnavailable as exc:
        return exc, time.monotonic() - started
    raise AssertionError("expected EmbeddingUnavailable")


def test_a_query_embedding_gives_up_after_its_own_timeout_without_retrying(fake, breaker_settings):
    fake.default = {"hang": True}
    provider = _provider(fake)
    exc, elapsed = _timed(lambda: provider.embed_query("hello"))
    assert elapsed < BOUND
    assert fake.received(1) == 1
    assert (type(exc), exc.code) == (EmbeddingUnavailable, "embedding_unavailable")
    assert "APITimeoutError" in exc.message
    assert exc.retry_after == embeddings.DEFAULT_RETRY_AFTER  # one failure: the breaker is still closed


def test_an_interactive_embedding_has_its_own_bound_and_background_work_keeps_its_retries(fake, breaker_settings):
    fake.script([{"hang": True}])
    provider = _provider(fake, timeout=1.0, max_retries=2)
    exc, elapsed = _timed(lambda: provider.embed(["hello"], interactive=True))
    assert elapsed < BOUND and fake.received(1) == 1
    # Background work: the first attempt hangs, the client's own retry answers.
    fake.script([{"hang": True}])
    assert provider.embed(["hello"]).shape == (1, 32)
    assert fake.received(3) == 3


def test_the_breaker_opens_after_consecutive_failures_and_then_fails_at_once(fake, breaker_settings, caplog):
    fake.default = {"hang": True}
    provider = _provider(fake)
    before = dict(embeddings.metrics)
    with caplog.at_level(logging.WARNING, logger="knowledge.embeddings"):
        _timed(lambda: provider.embed_query("one"))
        second, _ = _timed(lambda: provider.embed_query("two"))
        assert 59 < second.retry_after <= 60  # the call that opened it says how long
        for _ in range(3):
            exc, _ = _timed(lambda: provider.embed(["three"], interactive=True))
            assert 58 < exc.retry_after <= 60
            assert "circuit open" in exc.message
    assert fake.received(2) == 2  # nothing reached the server while open
    openings = [r for r in caplog.records if "circuit open for" in r.getMessage()]
    assert len(openings) == 1
    assert embeddings.metrics["breaker_openings"] == before["breaker_openings"] + 1
    assert embeddings.metrics["rejected"] == before["rejected"] + 3
    assert embeddings.metrics["unavailable"] == before["unavailable"] + 2


def test_after_the_cooldown_one_trial_goes_through_and_its_outcome_decides(fake, breaker_settings, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(embeddings, "time", clock)
    breaker_settings.EMBEDDING_BREAKER_FAILURES = 1
    fake.default = {"status": 503}
    provider = _provider(fake)
    _timed(lambda: provider.embed_query("x"))
    clock.advance(60)
    # The trial fails: the breaker opens again at once, no second request.
    _timed(lambda: provider.embed_query("x"))
    _timed(lambda: provider.embed_query("x"))
    assert fake.received(2) == 2
    clock.advance(60)
    # While the trial is in flight, every other call is refused without a request.
    fake.script([{"delay": 0.5}])
    fake.default = {}
    trial = threading.Thread(target=provider.embed, args=(["trial"],))
    trial.start()
    fake.received(3)
    _timed(lambda: provider.embed_query("meanwhile"))
    trial.join()
    assert fake.received(3) == 3
    # The trial succeeded: closed again.
    assert provider.embed(["after"]).shape == (1, 32)
    assert provider.breaker.open_until == 0.0 and provider.breaker.failures == 0


def test_a_trial_that_never_reports_gives_way_after_a_cooldown(fake, breaker_settings, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(embeddings, "time", clock)
    breaker = OpenAIProvider(model="m", dimensions=32, base_url=fake.base_url).breaker
    for _ in range(2):
        breaker.failed(False, TimeoutError())
    clock.advance(60)
    assert breaker.before_call() is True  # the trial, whose caller then vanishes
    with pytest.raises(EmbeddingUnavailable):
        breaker.before_call()
    clock.advance(60)
    assert breaker.before_call() is True


def test_refusals_and_bad_answers_are_embedding_errors_and_do_not_trip_the_breaker(fake, breaker_settings):
    breaker_settings.EMBEDDING_BREAKER_FAILURES = 1
    provider = _provider(fake)
    fake.script([{"status": 400}, {"dims": 8}])
    with pytest.raises(EmbeddingError, match="BadRequestError"):
        provider.embed(["too long"])
    with pytest.raises(EmbeddingError, match="dimension 8"):
        provider.embed(["x"])
    assert provider.breaker.open_until == 0.0
    assert provider.embed(["fine"]).shape == (1, 32)


def test_overload_after_retries_is_unavailable(fake, breaker_settings):
    fake.script([{"status": 503}, {"status": 429}])
    with pytest.raises(EmbeddingUnavailable, match="RateLimitError"):
        _provider(fake, max_retries=1).embed(["x"])


def test_the_errors_survive_pickling_with_their_class():
    unavailable = pickle.loads(pickle.dumps(EmbeddingUnavailable("down", retry_after=12.5)))
    assert type(unavailable) is EmbeddingUnavailable
    assert (unavailable.code, unavailable.message, unavailable.retry_after) == ("embedding_unavailable", "down", 12.5)
    failed = pickle.loads(pickle.dumps(EmbeddingError("bad")))
    assert type(failed) is EmbeddingError and failed.code == "embedding_failed"
    assert not isinstance(unavailable, EmbeddingError)
