"""The shared JSONL reader and writer: line numbers in errors, counted skips, atomic files."""

import io
import os
import stat

import pytest

from tracewheel.errors import DataError, RecordError
from tracewheel.jsonl import ReadStats, open_output, read_jsonl


def read(text: bytes, **kw):
    return list(read_jsonl(io.BytesIO(text), "in.jsonl", **kw))


def test_reads_objects_and_skips_blank_lines():
    assert read(b'{"a": 1}\n\n  \n{"b": "\xc3\xa9"}\n') == [{"a": 1}, {"b": "é"}]


def test_last_line_without_newline_is_read():
    assert read(b'{"a": 1}\n{"a": 2}') == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize(
    "line, problem",
    [
        (b"{bad", "invalid JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'"text"', "expected a JSON object, got str"),
        (b'{"a": "\xff"}', "not valid UTF-8"),
    ],
)
def test_bad_line_names_file_line_and_problem(line, problem):
    with pytest.raises(DataError) as info:
        read(b'{"ok": 1}\n\n' + line + b'\n{"ok": 2}\n')
    message = str(info.value.message)
    assert message.startswith("in.jsonl:3: ")
    assert problem in message
    assert "--skip-invalid" in message


def test_skip_invalid_counts_every_bad_line_by_reason():
    stats = ReadStats()
    warnings = []
    got = read(b'{"a": 1}\n{bad\n[1]\n{"a": 2}\n{also bad\n', skip_invalid=True, stats=stats,
               warn=warnings.append)
    assert got == [{"a": 1}, {"a": 2}]
    assert (stats.records, stats.invalid) == (2, 3)
    assert stats.reasons == {"bad JSON": 2, "not an object": 1}
    assert [w.split(":")[1] for w in warnings] == ["2", "3", "5"]


def test_validator_errors_carry_the_line():
    def validate(rec):
        if "id" not in rec:
            raise RecordError("not a valid task record: id: Field required")
        return rec

    with pytest.raises(DataError, match=r"^in.jsonl:2: not a valid task record: id"):
        read(b'{"id": "x"}\n{"query": "q"}\n', validate=validate)


def test_reader_is_lazy():
    """A bad line far down does not stop the records before it from being processed."""
    seen = []
    with pytest.raises(DataError):
        for rec in read_jsonl(io.BytesIO(b'{"a": 1}\n{"a": 2}\n{bad\n'), "x"):
            seen.append(rec["a"])
    assert seen == [1, 2]


def test_output_file_appears_only_when_complete(tmp_path):
    target = tmp_path / "out" / "records.jsonl"
    target.parent.mkdir()  # -o does not make directories (a typo would make one)
    with pytest.raises(RuntimeError), open_output(target) as writer:
        writer.write({"n": 1})
        raise RuntimeError("crash mid-way")
    assert not target.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temporary file left behind

    with open_output(target) as writer:
        for i in range(3):
            writer.write({"n": i, "text": "é"})
    assert target.read_text(encoding="utf-8").splitlines() == [
        '{"n":0,"text":"é"}', '{"n":1,"text":"é"}', '{"n":2,"text":"é"}'
    ]
    assert writer.count == 3


def test_output_file_has_ordinary_permissions(tmp_path):
    target = tmp_path / "records.jsonl"
    with open_output(target) as writer:
        writer.write({})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_output_to_a_device_or_fifo_writes_into_it(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    import threading

    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    with open_output(fifo) as writer:
        writer.write({"n": 1})
    reader.join(timeout=10)
    assert got == [b'{"n":1}\n']
    assert stat.S_ISFIFO(fifo.stat().st_mode)  # still a FIFO, not replaced by a file
