from knowledge.chunking import chunk_document, html_to_markdown, normalize_text

MD = """# Guide

Intro paragraph about the guide.

## Install

Run the installer. It takes a minute. Then restart the machine.

```python
def hello():
    return "world"
```

## Usage

Use it daily.
"""


def _chunks(text, content_type="markdown", size=200, overlap=0, parent=0):
    return chunk_document(text, content_type=content_type, chunk_size=size, chunk_overlap=overlap, parent_chunk_size=parent)


def test_markdown_chunks_carry_their_heading_path():
    chunks = _chunks(MD, size=120).chunks
    paths = [c.heading_path for c in chunks]
    assert ["Guide"] in paths
    assert ["Guide", "Install"] in paths
    assert paths[-1] == ["Guide", "Usage"]


def test_headings_start_new_chunks():
    chunks = _chunks(MD, size=2000).chunks
    assert [c.text.splitlines()[0] for c in chunks] == ["# Guide", "## Install", "## Usage"]


def test_fenced_code_block_is_kept_whole_when_it_fits():
    chunks = _chunks(MD, size=120).chunks
    code = [c for c in chunks if "def hello" in c.text]
    assert len(code) == 1
    assert '```python\ndef hello():\n    return "world"\n```' in code[0].text


def test_long_prose_is_split_at_sentences_and_never_mid_word():
    words = [f"word{i}" for i in range(400)]
    text = ". ".join(" ".join(words[i : i + 10]) for i in range(0, 400, 10)) + "."
    chunks = _chunks(text, content_type="text", size=150).chunks
    assert len(chunks) > 5
    vocabulary = set(words)
    for chunk in chunks:
        assert len(chunk.text) <= 150
        for token in chunk.text.replace(".", " ").split():
            assert token in vocabulary


def test_overlap_repeats_the_tail_of_the_previous_chunk():
    text = " ".join(f"w{i}" for i in range(300))
    chunks = _chunks(text, content_type="text", size=200, overlap=40).chunks
    assert len(chunks) > 2
    assert chunks[1].text.split()[0] in chunks[0].text.split()


def test_parent_sections_hold_their_children():
    result = _chunks(MD * 3, size=100, parent=300)
    assert result.sections
    for chunk in result.chunks:
        section = result.sections[chunk.section_index]
        assert chunk.text.split()[0] in section


def test_html_text_is_extracted_with_headings_and_code():
    html = "<html><head><style>x{}</style></head><body><h2>Title</h2><p>Hello <b>there</b></p><pre>a = 1</pre><script>evil()</script></body></html>"
    md = html_to_markdown(html)
    assert md.startswith("## Title")
    assert "Hello there" in md
    assert "```\na = 1\n```" in md
    assert "evil" not in md and "x{}" not in md
    assert _chunks(html, content_type="html").chunks[0].heading_path == ["Title"]


def test_plain_text_has_no_headings():
    chunks = _chunks("# not a heading\n\nsecond paragraph", content_type="text", size=1000).chunks
    assert chunks[0].heading_path == []


def test_normalize_text_is_stable_across_line_endings_and_unicode_forms():
    assert normalize_text("cafe\u0301 \r\nline  \r\n") == normalize_text("caf\u00e9 \nline")


def test_heading_titles_drop_closing_hashes_and_surrounding_whitespace():
    def path(line):
        return _chunks(f"{line}\n\nbody", size=1000).chunks[-1].heading_path

    assert path("## Install ##") == ["Install"]
    assert path("#\tTabs\t#  ") == ["Tabs"]
    assert path("# C# notes") == ["C# notes"]
    assert path("# a # b ###") == ["a # b"]
    assert path("# ###") == [""]
    assert path("###### Six") == ["Six"]
    for not_a_heading in ("####### Seven", "#hashtag", "#"):
        assert path(not_a_heading) == []


def test_fences_open_with_backticks_or_tildes_after_indentation():
    chunks = _chunks("  ~~~\n# not a heading\n~~~\n\n# Real", size=1000).chunks
    assert chunks[0].text == "  ~~~\n# not a heading\n~~~"
    assert [c.heading_path for c in chunks] == [[], ["Real"]]


def test_html_blocks_leave_out_skipped_tags_and_inner_blocks_once():
    html = "<div><ul><li>one <p>inner</p><script>x()</script></li></ul><template><p>t</p></template></div>"
    assert html_to_markdown(html) == "- one inner"


def test_html_construct_left_open_at_the_end_is_dropped():
    # As Python's html.parser does from 3.13.4 on (gh-135462), on any version.
    assert html_to_markdown("<p>kept</p><p>also <b class='x") == "kept\n\nalso"
    assert html_to_markdown("<p>kept</p><!-- unclosed") == "kept"


def test_a_long_heading_title_is_cut_in_the_heading_path_but_kept_in_the_text():
    from knowledge.chunking import HEADING_PATH_TITLE_CHARS

    title = "word " * 1000
    doc = chunk_document(f"# {title}\n\n" + "Body sentence here. " * 200, content_type="markdown",
                         chunk_size=200, chunk_overlap=0, parent_chunk_size=0)  # fmt: skip
    assert all(len(t) <= HEADING_PATH_TITLE_CHARS for c in doc.chunks for t in c.heading_path)
    assert " ".join(c.text for c in doc.chunks).count("word") == 1000  # the heading line is all there
