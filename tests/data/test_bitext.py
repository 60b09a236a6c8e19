"""Bitext readers: each layout, each error names its file (and line)."""

from collections import Counter
from pathlib import Path

import pytest

from dist_optical.data import Pair, read_bible_verses, read_bitext
from dist_optical.data.bitext import BitextError

BIBLE = Path("/work/shared/data/bible")


def bible_xml(verses: dict[str, str]) -> str:
    segs = "\n".join(f'<seg id="{vid}" type="verse">\n   {text}\n</seg>' for vid, text in verses.items())
    body = f'<div id="b.X" type="book">{segs}</div>'
    return f'<?xml version="1.0"?>\n<cesDoc><text><body>{body}</body></text></cesDoc>\n'


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_aligned_text(tmp_path):
    src = write(tmp_path / "c.swh", "\ufeffhabari\n  dunia  \r\n")
    tgt = write(tmp_path / "c.eng", "hello\nworld")
    assert list(read_bitext([src, tgt])) == [Pair("c:1", "habari", "hello"), Pair("c:2", "dunia", "world")]


def test_aligned_line_counts_differ(tmp_path):
    src = write(tmp_path / "a.swh", "x\ny\nz\n")
    tgt = write(tmp_path / "a.eng", "x\ny\n")
    with pytest.raises(BitextError, match=r"a\.swh has 3 lines.*a\.eng has 2"):
        list(read_bitext([src, tgt]))


def test_aligned_bad_utf8_names_line(tmp_path):
    src = write(tmp_path / "a.swh", b"ok\nbad \xff\xfe here\n")
    tgt = write(tmp_path / "a.eng", "ok\nfine\n")
    with pytest.raises(BitextError, match=r"a\.swh:2: not valid UTF-8"):
        list(read_bitext([src, tgt]))


def test_tsv_two_and_three_columns(tmp_path):
    two = write(tmp_path / "two.tsv", "jambo\thello\nasante\tthanks\n")
    assert list(read_bitext([two])) == [Pair("two:1", "jambo", "hello"), Pair("two:2", "asante", "thanks")]
    three = write(tmp_path / "three.tsv", "key\tsrc\ttgt\nk1\tjambo\thello\nk2\tasante\tthanks\n")
    assert [p.key for p in read_bitext([three])] == ["k1", "k2"]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a\tb\nc\td\te\n", 2),
        ("key\tsrc\ttgt\na\tb\tc\nd\te\n", 3),
        ("only one column\n", 1),
        ("key\tsrc\ttgt\nk\ta\tb\nk\tc\td\n", 3),
        ("k1\tjambo\thello\n", 1),  # 3 columns, undeclared: key or score? refused
    ],
)
def test_tsv_bad_row_names_file_and_line(tmp_path, text, line):
    path = write(tmp_path / "bad.tsv", text)
    with pytest.raises(BitextError, match=rf"bad\.tsv:{line}: "):
        list(read_bitext([path]))


def test_bible_pairs_by_id_and_excludes_books(tmp_path):
    src = write(
        tmp_path / "sw.xml",
        bible_xml({"b.MAT.1.1": "Mwanzo", "b.MAT.1.2": "pili", "b.REV.1.1": "ufunuo", "b.MAT.9.9": "peke"}),
    )
    tgt = write(
        tmp_path / "en.xml",
        bible_xml(
            {"b.MAT.1.2": "second", "b.MAT.1.1": "Beginning", "b.REV.1.1": "revelation", "b.JHN.1.1": "x"}
        ),
    )
    counts = Counter()
    pairs = list(read_bitext([src, tgt], exclude_books=["REV"], counts=counts))
    assert pairs == [Pair("b.MAT.1.1", "Mwanzo", "Beginning"), Pair("b.MAT.1.2", "pili", "second")]
    assert counts == {"excluded": 1, "unpaired_src": 1, "unpaired_tgt": 1}
    with pytest.raises(BitextError, match="exclude_books.*'Rev'"):
        list(read_bitext([src, tgt], exclude_books=["Rev"]))


def test_bible_errors_name_file_and_line(tmp_path):
    good = write(tmp_path / "good.xml", bible_xml({"b.MAT.1.1": "a"}))
    broken = write(tmp_path / "broken.xml", '<cesDoc>\n<seg id="b.MAT.1.1">a</seg>\n<seg>\n</cesDoc>\n')
    with pytest.raises(BitextError, match=r"broken\.xml:4:\d+: malformed XML"):
        list(read_bitext([broken, good]))
    empty = write(tmp_path / "empty.xml", "<cesDoc><text><p>no verses</p></text></cesDoc>")
    with pytest.raises(BitextError, match=r"empty\.xml: no <seg"):
        list(read_bitext([good, empty]))


def test_unsupported_combination(tmp_path):
    xml = write(tmp_path / "a.xml", bible_xml({"b.MAT.1.1": "a"}))
    txt = write(tmp_path / "a.eng", "a\n")
    for paths in ([xml, txt], [xml], [txt], [txt, txt, txt]):
        with pytest.raises(BitextError, match="unsupported bitext input"):
            read_bitext(paths)


@pytest.mark.skipif(not BIBLE.is_dir(), reason="shipped Bible data not present")
def test_real_bible_swahili_english():
    verses = read_bible_verses(BIBLE / "Swahili-NT.xml")
    assert len(verses) == 7853 and not any(v.startswith("b.PHI.") for v in verses)
    counts = Counter()
    pairs = list(read_bitext([BIBLE / "Swahili-NT.xml", BIBLE / "English-KJV-NT.xml"], ["REV"], counts))
    assert len(pairs) + counts["excluded"] == 7853
    assert counts["excluded"] == sum(v.startswith("b.REV.") for v in verses) > 0
    assert not any(p.key.startswith("b.REV.") for p in pairs)
    first = pairs[0]
    assert first.key == "b.MAT.1.1" and first.tgt.startswith("The book of the generation of Jesus Christ")
    assert "\n" not in first.src and "  " not in first.src
