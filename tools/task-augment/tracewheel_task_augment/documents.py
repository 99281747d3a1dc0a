"""Documents to excerpts: read text, Markdown, HTML (and PDF or DOCX where pypdf or
python-docx is installed), split them into blocks (paragraphs, code blocks, headings) and pack
the blocks into chunks of at most ``chunk_size`` characters that keep their section headings
and, for text formats, their line numbers."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from tracewheel.errors import TracewheelError

from .checks import script_of

TEXT_SUFFIXES = {".md", ".markdown", ".mdown", ".txt", ".text", ".rst", ""}
MARKDOWN_SUFFIXES = {".md", ".markdown", ".mdown"}
HTML_SUFFIXES = {".html", ".htm"}
SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | {".pdf", ".docx"}

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t#]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


@dataclass
class Block:
    """A paragraph, code block, list or heading; ``level`` is the heading level (0: not one)."""

    text: str
    level: int = 0
    lines: tuple[int, int] | None = None  # first and last line in the file (text formats)
    page: int | None = None               # PDF page (1-based)


@dataclass
class Chunk:
    document: str
    index: int
    text: str
    section: str | None
    lines: tuple[int, int] | None = None
    pages: tuple[int, int] | None = None
    script: str | None = None

    def location(self) -> dict:
        where: dict = {"chunk": self.index}
        if self.lines:
            where["lines"] = list(self.lines)
        if self.pages:
            where["pages"] = list(self.pages)
        if self.section:
            where["section"] = self.section
        return where


@dataclass
class Document:
    path: str
    sha256: str
    chunks: list[Chunk] = field(default_factory=list)


# --- reading ---------------------------------------------------------------------------------

def _decode(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise TracewheelError(f"{path}: not UTF-8 text (byte {err.start}); convert it first, "
                            "e.g. iconv -t utf-8") from None


def markdown_blocks(text: str) -> Iterator[Block]:
    """Blocks of Markdown source: ATX and setext headings, fenced code kept whole, paragraphs
    (lists included) separated by blank lines. YAML front matter is skipped."""
    lines = text.splitlines()
    i = 0
    if lines and lines[0].strip() == "---":  # front matter
        end = next((j for j in range(1, len(lines)) if lines[j].strip() in ("---", "...")), None)
        if end is not None:
            i = end + 1
    para: list[str] = []
    start = 0

    def flush() -> Iterator[Block]:
        if para:
            yield Block("\n".join(para), lines=(start + 1, start + len(para)))
            para.clear()

    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        atx = _ATX.match(line)
        if fence:
            yield from flush()
            mark = fence.group(1)
            j = i + 1
            while j < len(lines) and not lines[j].lstrip().startswith(mark):
                j += 1
            end = min(j, len(lines) - 1)
            yield Block("\n".join(lines[i:end + 1]), lines=(i + 1, end + 1))
            i = end + 1
            continue
        if atx:
            yield from flush()
            yield Block(line.strip(), level=len(atx.group(1)), lines=(i + 1, i + 1))
        elif para and len(para) == 1 and _SETEXT.match(line):
            level = 1 if line.strip().startswith("=") else 2
            yield Block(para[0].strip(), level=level, lines=(start + 1, i + 1))
            para.clear()
        elif not line.strip():
            yield from flush()
        else:
            if not para:
                start = i
            para.append(line)
        i += 1
    yield from flush()


def text_blocks(text: str) -> Iterator[Block]:
    """Paragraphs of plain text, separated by blank lines."""
    para: list[str] = []
    start = 0
    for i, line in enumerate([*text.splitlines(), ""]):
        if line.strip():
            if not para:
                start = i
            para.append(line)
        elif para:
            yield Block("\n".join(para), lines=(start + 1, start + len(para)))
            para = []


class _HTMLText(HTMLParser):
    """Block-level text of an HTML page: headings, paragraphs, list items, preformatted text;
    scripts, styles and navigation left out."""

    BLOCKS = {"p", "div", "li", "pre", "blockquote", "td", "th", "dt", "dd", "section",
              "article", "tr", "br", "table", "ul", "ol", "main", "header", "footer"}
    SKIP = {"script", "style", "nav", "noscript", "template", "head"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self._text: list[str] = []
        self._level = 0
        self._skip = 0

    def _flush(self) -> None:
        text = re.sub(r"[ \t\r\f\v]+", " ", "".join(self._text)).strip()
        text = re.sub(r" *\n *", "\n", text)
        if text:
            self.blocks.append(Block(("#" * self._level + " " if self._level else "") + text,
                                     level=self._level))
        self._text = []
        self._level = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.SKIP:
            self._skip += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self._level = int(tag[1])
        elif tag in self.BLOCKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif re.fullmatch(r"h[1-6]", tag) or tag in self.BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._text.append(data)


def html_blocks(text: str) -> list[Block]:
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    parser._flush()
    return parser.blocks


def pdf_blocks(path: str) -> Iterator[Block]:
    try:
        from pypdf import PdfReader
    except ImportError:
        raise TracewheelError(f"{path}: reading PDF needs pypdf (pip install pypdf)") from None
    try:
        reader = PdfReader(path)
        for number, page in enumerate(reader.pages, start=1):
            for block in text_blocks(page.extract_text() or ""):
                yield Block(block.text, page=number)
    except Exception as err:  # pypdf's errors have no common base worth naming here
        raise TracewheelError(f"{path}: cannot read PDF: {err}") from None


def docx_blocks(path: str) -> Iterator[Block]:
    try:
        import docx
    except ImportError:
        raise TracewheelError(f"{path}: reading DOCX needs python-docx "
                            "(pip install python-docx)") from None
    try:
        document = docx.Document(path)
    except Exception as err:
        raise TracewheelError(f"{path}: cannot read DOCX: {err}") from None
    for para in document.paragraphs:
        text = para.text.strip()
        if not text:
            continue
        style = (para.style.name if para.style is not None else "") or ""
        match = re.fullmatch(r"Heading (\d)", style)
        level = int(match.group(1)) if match else (1 if style == "Title" else 0)
        yield Block(("#" * level + " " if level else "") + text, level=level)


def read_blocks(path: str) -> tuple[list[Block], str]:
    """The blocks of the document at ``path`` and the sha256 of its bytes."""
    suffix = Path(path).suffix.lower()
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise TracewheelError(f"{path}: cannot read: {err.strerror or err}") from None
    digest = hashlib.sha256(data).hexdigest()
    if suffix == ".pdf":
        return list(pdf_blocks(path)), digest
    if suffix == ".docx":
        return list(docx_blocks(path)), digest
    text = _decode(data, path)
    if suffix in HTML_SUFFIXES:
        return html_blocks(text), digest
    if suffix in MARKDOWN_SUFFIXES:
        return list(markdown_blocks(text)), digest
    return list(text_blocks(text)), digest


# --- chunking --------------------------------------------------------------------------------

def _heading_title(block: Block) -> str:
    return block.text.lstrip("#").strip() or block.text.strip()


def _split_long(block: Block, size: int) -> Iterator[Block]:
    """A block longer than ``size``: pieces at line breaks, then at sentence ends, then hard."""
    if len(block.text) <= size:
        yield block
        return
    first = block.lines[0] if block.lines else None
    piece: list[str] = []
    piece_start = 0
    for offset, line in enumerate(block.text.split("\n")):
        parts = [line] if len(line) <= size else _split_line(line, size)
        for part in parts:
            if piece and len("\n".join([*piece, part])) > size:
                yield _piece(block, piece, first, piece_start, offset)
                piece, piece_start = [], offset
            piece.append(part)
    if piece:
        yield _piece(block, piece, first, piece_start, len(block.text.split("\n")) - 1)


def _piece(block: Block, parts: list[str], first: int | None, start: int, end: int) -> Block:
    lines = (first + start, first + end) if first is not None else None
    return Block("\n".join(parts), level=0, lines=lines, page=block.page)


def _split_line(line: str, size: int) -> list[str]:
    parts: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(line):
        while len(sentence) > size:  # no sentence end near: cut hard
            if current:
                parts.append(current)
                current = ""
            parts.append(sentence[:size])
            sentence = sentence[size:]
        if current and len(current) + 1 + len(sentence) > size:
            parts.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    if current:
        parts.append(current)
    return parts


def chunk_blocks(blocks: list[Block], document: str, size: int) -> list[Chunk]:
    """Pack blocks into chunks of at most ``size`` characters (plus the headings that open
    them). A heading starts a new chunk once the current one holds a quarter of ``size``; a
    chunk's ``section`` is the heading path above its first text. Headings with no text after
    them make no chunk."""
    chunks: list[Chunk] = []
    path: list[tuple[int, str]] = []  # (level, title) of the headings above
    current: list[Block] = []
    section: str | None = None

    def close() -> None:
        nonlocal current
        if any(b.level == 0 for b in current):
            text = "\n\n".join(b.text for b in current)
            lines = [b.lines for b in current if b.lines]
            pages = [b.page for b in current if b.page]
            chunks.append(Chunk(
                document=document, index=len(chunks), text=text, section=section,
                lines=(lines[0][0], lines[-1][1]) if lines else None,
                pages=(pages[0], pages[-1]) if pages else None, script=script_of(text)))
        current = []

    for block in blocks:
        if block.level:
            size_now = sum(len(b.text) + 2 for b in current)
            if any(b.level == 0 for b in current) and size_now >= size / 4:
                close()
            path = [p for p in path if p[0] < block.level] + [(block.level, _heading_title(block))]
            current.append(block)
            continue
        for piece in _split_long(block, size):
            has_text = any(b.level == 0 for b in current)
            if has_text and sum(len(b.text) + 2 for b in current) + len(piece.text) > size:
                close()
            if not any(b.level == 0 for b in current):
                section = " > ".join(title for _, title in path) or None
            current.append(piece)
    close()
    return chunks


def load_documents(paths: list[str], size: int) -> list[Document]:
    """Every document of ``paths`` (a folder means the documents in it, recursively, in name
    order), chunked."""
    documents = []
    for path in expand_paths(paths):
        blocks, digest = read_blocks(path)
        documents.append(Document(path, digest, chunk_blocks(blocks, path, size)))
    return documents


def expand_paths(paths: list[str]) -> list[str]:
    found: list[str] = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            found.extend(str(f) for f in sorted(p.rglob("*"))
                         if f.is_file() and f.suffix.lower() in SUFFIXES - {""}
                         and not any(part.startswith(".") for part in f.relative_to(p).parts))
        else:
            found.append(path)
    return found
