"""Issue 14: no document makes the chunker run for long. Adversarial Markdown, plain text
and HTML of up to 1 MB (runs of spaces, #'s, backticks, sentence marks, long words,
nested tags) is chunked within a generous time, into chunks that keep the invariants.

The time bound is a hang guard, not a benchmark: it is an order of magnitude above what
a linear chunker needs (in CPU seconds), and what it catches is quadratic or worse
behaviour, which takes minutes to hours on these sizes. bench/adversarial.py measures the times.
"""

import operator
import time
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from knowledge.chunking import chunk_document, html_to_markdown, normalize_text

MB = 1 << 20
SECONDS_PER_MB = 10
EXAMPLES = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _within_guard(fn, size: int):
    # CPU time of this process, not wall time: other processes on a busy machine do not
    # count against the guard.
    started = time.process_time()
    result = fn()
    elapsed = time.process_time() - started
    assert elapsed < SECONDS_PER_MB * max(size / MB, 1), f"{elapsed:.1f} s for {size} characters"
    return result


def _chunk(text, content_type, config):
    size, overlap, parent = config
    return chunk_document(
        text, content_type=content_type, chunk_size=size, chunk_overlap=overlap, parent_chunk_size=parent
    )


@st.composite
def configs(draw):
    size = draw(st.integers(100, 8000))  # CONFIG_LIMITS and agent_config_validate
    overlap = draw(st.integers(0, size // 2))
    parent = draw(st.sampled_from([0, size, min(4 * size, 32000), 32000]))
    return size, overlap, parent


# Long runs are what a backtracking pattern or a rescan per element feeds on. Listed
# first: hypothesis draws the first elements of sampled_from more often.
RUN_LENGTHS = st.sampled_from([5000, 50000, 1, 2, 100, 3])
SIZES = st.sampled_from([MB // 64, MB // 8, MB])


def _runs(units):
    return st.lists(st.builds(operator.mul, st.sampled_from(units), RUN_LENGTHS), min_size=1, max_size=8).map("".join)


def _repeated(piece, sizes=SIZES):
    """The piece repeated to a drawn size."""
    return st.builds(lambda p, size: (p * (size // len(p) + 1))[:size], piece, sizes)


# Markdown: heading, fence and prose lines whose words and gaps are runs; a heading's
# closing #'s too.
WORD = st.builds(operator.mul, st.sampled_from(["a", "b.", "word", "#", "`", "~", "。"]), RUN_LENGTHS)
SPACES = st.builds(operator.mul, st.sampled_from([" ", "\t", " \t"]), RUN_LENGTHS)
GAP = st.one_of(SPACES, st.builds(operator.mul, st.sampled_from([". ", "! "]), RUN_LENGTHS))
HEADING = st.builds(lambda n, *parts: "#" * n + "".join(parts), st.integers(1, 7), SPACES, WORD, SPACES, WORD, GAP, WORD)
FENCE = st.builds(operator.add, st.sampled_from(["```", "~~~", "  ```"]), st.one_of(GAP, WORD))
PROSE = st.builds(lambda *parts: "".join(parts), WORD, GAP, WORD, GAP)
MARKDOWN = _repeated(st.lists(st.one_of(HEADING, FENCE, PROSE).map(lambda line: line + "\n"), min_size=1).map("".join))
TEXT = _repeated(_runs([" ", "\t", ".", ". ", "a. ", "!", "?", "\n", "\n\n", "a", "word ", "x" * 50]))
# Up to 256 KB: parsing costs microseconds per tag, 1 MB of tags would take most of the
# test's time; the regression inputs below are 1 MB.
HTML = _repeated(
    _runs(["<div>", "<p>", "</p>", "<li>", "<pre>", "<template>", "<script></script>", "<b>", "<a", "<!--", "</",
           "<td>", "text ", " ", "&amp;", "<p>x</p>"]),
    st.sampled_from([MB // 64, MB // 16, MB // 4]),
)


def _bounded_chunks(text, content_type, config):
    """The chunks, made within the hang guard, each within the config's sizes; without
    overlap, Markdown and text chunks hold every non-space character exactly once, in
    order (compared as a bool: pytest's diff of two 1 MB strings outlasts the chunking)."""
    size, overlap, parent = config
    result = _within_guard(lambda: _chunk(text, content_type, config), len(text))
    for chunk in result.chunks:
        assert chunk.text  # may be all whitespace: a run of tabs longer than a chunk is cut like a word
        assert len(chunk.text) <= size
    for section in result.sections:
        assert len(section) <= parent
    if not overlap and content_type != "html":
        assert "".join("".join(c.text.split()) for c in result.chunks) == "".join(text.split())
    return result


@settings(EXAMPLES, max_examples=15)  # a heading with a long run of spaces in about one in six
@given(MARKDOWN, configs())
def test_adversarial_markdown_is_chunked_in_bounded_time(text, config):
    _bounded_chunks(text, "markdown", config)


@EXAMPLES
@given(TEXT, configs())
def test_adversarial_plain_text_loses_no_word(text, config):
    result = _bounded_chunks(text, "text", config)
    chunked = set().union(*(c.text.split() for c in result.chunks))
    longest = config[0] - config[1]  # a longer word is cut to fit
    missing = {word for word in text.split() if len(word) <= longest} - chunked
    assert not missing, sorted(missing)[:5]


@EXAMPLES
@given(HTML, configs())
def test_adversarial_html_is_chunked_in_bounded_time(html, config):
    _bounded_chunks(html, "html", config)


@settings(max_examples=20, deadline=None)
@given(st.builds(operator.add, MARKDOWN.map(lambda t: t[:20000]), _runs(["é", "\u0301", "\u0316", "\r\n"])), configs())
def test_chunking_is_deterministic(text, config):
    text = normalize_text(text)
    first, second = _chunk(text, "markdown", config), _chunk(text, "markdown", config)
    assert first == second


@pytest.mark.parametrize(
    "text, content_type",
    [
        pytest.param("# a" + " " * 20000 + "b", "markdown", id="heading-with-spaces"),
        pytest.param("#" + " " * 100000, "markdown", id="hash-then-spaces"),
        pytest.param("#" * MB, "markdown", id="heading-line-of-hashes"),
        pytest.param("# a" + "#" * MB + " " * 1000 + "b", "markdown", id="heading-closing-hashes"),
        pytest.param("```" + " " * 100000, "markdown", id="fence-with-spaces"),
        pytest.param("`" * MB, "markdown", id="backticks"),
        pytest.param("# a\n" * (MB // 4), "markdown", id="only-headings"),
        pytest.param("a. " * (MB // 3), "text", id="sentences"),
        pytest.param("a " * (MB // 2), "text", id="one-letter-words"),
        pytest.param("a" + " " * MB + "b", "text", id="spaces"),
        pytest.param("<div>" * 100000 + "x", "html", id="nested-divs"),
        pytest.param("<p>" * 50000, "html", id="nested-paragraphs"),
        pytest.param("<div>" * 50000 + "<p>x</p>" * 50000, "html", id="blocks-under-deep-nesting"),
        pytest.param("<template>" * 100000, "html", id="nested-skipped-tags"),
        pytest.param("<p>x</p><script></script>" * 40000, "html", id="many-skipped-tags"),
        pytest.param("<a" * (MB // 2), "html", id="unclosed-tags"),
        pytest.param("<!--" * (MB // 4), "html", id="unclosed-comments"),
        pytest.param("</" * (MB // 2), "html", id="unclosed-end-tags"),
    ],
)
def test_adversarial_input_is_chunked_in_bounded_time(text, content_type):
    _bounded_chunks(text, content_type, (100, 20, 400))


def test_combining_marks_in_reverse_order_normalize_in_bounded_time():
    # CPython reorders a run of combining marks by insertion: quadratic in the run. A run
    # longer than 30 gets a CGJ after every 30 marks (UAX #15 Stream-Safe Text Format).
    text = "a" + "\u0301\u0316" * (MB // 2)
    normalized = _within_guard(lambda: normalize_text(text), len(text))
    marks = normalized.replace("\u034f", "")
    # NFC still composes a + U+0301 into U+00E1; every other mark is kept.
    assert (len(marks), marks.count("\u0301"), normalized.count("\u034f")) == (len(text) - 1, MB // 2 - 1, MB // 30)
    assert unicodedata.is_normalized("NFC", normalized)
    short = "a" + "\u0301\u0316" * 15
    assert normalize_text(short) == unicodedata.normalize("NFC", short)


def test_html_nested_deeper_than_the_recursion_limit_keeps_its_text():
    assert html_to_markdown("<div>" * 100000 + "x") == "x"
    assert html_to_markdown("<div>" * 50000 + "<p>x</p><h2>T</h2>") == "x\n\n## T"
