import gzip
import os
import shutil

from producers.tail import StartPosition


def append(path, *lines):
    with open(path, "ab") as out:
        out.write(b"".join(line + b"\n" for line in lines))


def numbered(prefix, count, start=0):
    return [f"{prefix} line {i:05d} 1vXyZa-000AbC-12 => user@example.com".encode() for i in range(start, start + count)]


def test_start_at_end_skips_history_but_reads_what_follows(tmp_path, harness_factory):
    log = tmp_path / "exim_mainlog"
    append(log, *numbered("old", 3))
    harness = harness_factory(str(log), start=StartPosition.END)
    assert harness.drain() == []
    append(log, *numbered("new", 2))
    assert harness.drain() == numbered("new", 2)


def test_start_at_beginning_reads_history(tmp_path, harness_factory):
    log = tmp_path / "exim_mainlog"
    append(log, *numbered("old", 3))
    assert harness_factory(str(log)).drain() == numbered("old", 3)


def test_rename_and_create_drains_the_old_file_first(tmp_path, harness_factory):
    log = tmp_path / "exim_mainlog"
    append(log, *numbered("a", 5))
    harness = harness_factory(str(log))
    assert harness.drain() == numbered("a", 5)
    append(log, *numbered("a", 5, start=5))
    os.rename(log, tmp_path / "exim_mainlog.1")
    append(tmp_path / "exim_mainlog.1", *numbered("a", 2, start=10))  # a writer still holding the old file
    append(log, *numbered("b", 4))
    assert harness.drain() == numbered("a", 7, start=5) + numbered("b", 4)


def test_rotated_file_deleted_before_it_was_drained_is_read_from_the_open_handle(tmp_path, harness_factory):
    log = tmp_path / "exim_mainlog"
    append(log, *numbered("a", 1))
    harness = harness_factory(str(log))
    harness.drain()
    append(log, *numbered("a", 3, start=1))
    os.rename(log, tmp_path / "elsewhere")
    os.unlink(tmp_path / "elsewhere")
    append(log, *numbered("b", 1))
    assert harness.drain() == numbered("a", 3, start=1) + numbered("b", 1)
    assert not harness.engine.readers.keys() - {harness.emitted[-1][0]}


def test_restart_resumes_an_unfinished_rotated_file(tmp_path, harness_factory):
    log = tmp_path / "exim_mainlog"
    append(log, *numbered("a", 3))
    harness = harness_factory(str(log), start=StartPosition.END)
    append(log, *numbered("a", 2, start=3))
    harness.drain()
    harness.restart(clean=False)
    append(log, *numbered("a", 2, start=5))
    os.rename(log, tmp_path / "exim_mainlog.01")  # exicyclog's naming
    append(log, *numbered("b", 2))
    assert harness.drain() == numbered("a", 2, start=5) + numbered("b", 2)


def test_copytruncate_ships_everything_up_to_the_copy_and_after_the_truncation(tmp_path, harness_factory):
    log = tmp_path / "exim_mainlog"
    append(log, *numbered("a", 3))
    harness = harness_factory(str(log))
    harness.drain()
    append(log, *numbered("a", 3, start=3))  # not read yet when the copy is taken
    shutil.copyfile(log, tmp_path / "exim_mainlog.1")
    os.truncate(log, 0)
    append(log, *numbered("b", 2))
    assert harness.drain() == numbered("a", 3, start=3) + numbered("b", 2)
    assert harness.truncations == [str(log)]


def test_copytruncate_refilled_past_the_old_offset_is_detected(tmp_path, harness_factory):
    log = tmp_path / "exim_mainlog"
    append(log, *numbered("a", 2))
    harness = harness_factory(str(log))
    harness.drain()
    os.truncate(log, 0)
    append(log, *numbered("b", 10))
    assert harness.drain() == numbered("b", 10)
    assert harness.truncations == [str(log)]


def test_compressed_rotated_file_is_read_only_when_unfinished(tmp_path, harness_factory):
    log = tmp_path / "exim_mainlog"
    append(log, *numbered("a", 4))
    harness = harness_factory(str(log))
    harness.drain()
    harness.restart(clean=False)
    append(log, *numbered("a", 3, start=4))  # written while the shipper was down
    rotated = tmp_path / "exim_mainlog.1"
    os.rename(log, rotated)
    with gzip.open(str(rotated) + ".gz", "wb") as out:
        out.write(rotated.read_bytes())
    rotated.unlink()
    append(log, *numbered("b", 1))
    assert harness.drain() == numbered("a", 3, start=4) + numbered("b", 1)
    # finished now: neither the same archive nor a restart reads it again
    harness.restart()
    append(log, *numbered("b", 1, start=1))
    assert harness.drain() == numbered("b", 1, start=1)


def test_compressed_file_without_checkpoint_is_never_read(tmp_path, harness_factory):
    log = tmp_path / "exim_mainlog"
    with gzip.open(str(log) + ".1.gz", "wb") as out:
        out.write(b"".join(line + b"\n" for line in numbered("z", 3)))
    append(log, *numbered("a", 1))
    assert harness_factory(str(log), f"{log}.*").drain() == numbered("a", 1)


def test_glob_follows_several_files_and_waits_for_a_first_line(tmp_path, harness_factory):
    harness = harness_factory(str(tmp_path / "*.log"))
    (tmp_path / "one.log").write_bytes(b"partial first li")
    assert harness.drain() == []
    append(tmp_path / "one.log", b"ne")
    append(tmp_path / "two.log", b"two")
    assert sorted(harness.drain()) == [b"partial first line", b"two"]


def test_checkpointed_restart_emits_no_duplicates(tmp_path, harness_factory):
    log = tmp_path / "exim_mainlog"
    harness = harness_factory(str(log))
    append(log, *numbered("a", 3))
    with open(log, "ab") as out:
        out.write(b"half a li")
    harness.drain()
    harness.restart(clean=False)
    append(log, b"ne", *numbered("a", 2, start=3))
    harness.drain()
    assert harness.lines() == [*numbered("a", 3), b"half a line", *numbered("a", 2, start=3)]
    offsets = [offset for _, offset, _ in harness.emitted]
    assert offsets == sorted(set(offsets))
