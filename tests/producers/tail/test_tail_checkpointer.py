import time

import orjson

from producers.tail.checkpointer import FILE_NAME, TEMP_NAME, Checkpointer
from producers.tail.types import Chunk


def chunk(file_id, start, end, final=False):
    return Chunk(file_id, "/var/log/exim_mainlog", [start], [b"x" * (end - start - 1)], end, final=final)


def test_offset_advances_only_over_contiguous_acks(tmp_path):
    checkpointer = Checkpointer(tmp_path)
    checkpointer.load()
    first, second, third = (checkpointer.track(chunk("a", s, e)) for s, e in [(0, 10), (10, 20), (20, 30)])
    checkpointer.ack(second)
    assert "a" not in checkpointer.committed()
    checkpointer.ack(first)
    assert checkpointer.committed() == {"a": 20}
    checkpointer.ack(third)
    assert checkpointer.committed() == {"a": 30}
    assert checkpointer.unacked() == 0


def test_files_are_tracked_independently(tmp_path):
    checkpointer = Checkpointer(tmp_path)
    checkpointer.load()
    a = checkpointer.track(chunk("a", 0, 10))
    b = checkpointer.track(chunk("b", 0, 5, final=True))
    checkpointer.ack(b)
    assert checkpointer.committed() == {"b": 5}
    assert checkpointer.state["b"].done
    checkpointer.ack(a)
    assert checkpointer.committed() == {"a": 10, "b": 5}


def test_saved_state_is_loaded_by_a_new_process(tmp_path):
    checkpointer = Checkpointer(tmp_path)
    checkpointer.load()
    checkpointer.ack(checkpointer.track(chunk("a", 0, 42)))
    assert checkpointer.save_if_dirty()
    assert not checkpointer.save_if_dirty()
    assert not (tmp_path / TEMP_NAME).exists()
    restored = Checkpointer(tmp_path)
    assert {k: v.offset for k, v in restored.load().items()} == {"a": 42}
    assert restored.known_files()["a"].offset == 42


def test_a_partial_temp_file_is_ignored(tmp_path):
    checkpointer = Checkpointer(tmp_path)
    checkpointer.load()
    checkpointer.ack(checkpointer.track(chunk("a", 0, 42)))
    checkpointer.save()
    whole = (tmp_path / FILE_NAME).read_bytes()
    (tmp_path / TEMP_NAME).write_bytes(whole[: len(whole) // 2])
    assert {k: v.offset for k, v in Checkpointer(tmp_path).load().items()} == {"a": 42}


def test_a_complete_temp_file_from_an_interrupted_save_wins(tmp_path):
    checkpointer = Checkpointer(tmp_path)
    checkpointer.load()
    checkpointer.ack(checkpointer.track(chunk("a", 0, 42)))
    checkpointer.save()
    newer = orjson.loads((tmp_path / FILE_NAME).read_bytes())
    newer["files"]["a"]["offset"] = 84
    (tmp_path / TEMP_NAME).write_bytes(orjson.dumps(newer))
    assert Checkpointer(tmp_path).load()["a"].offset == 84


def test_corrupt_checkpoint_files_start_empty(tmp_path):
    (tmp_path / FILE_NAME).write_bytes(b"\x00\x00\x00")
    (tmp_path / TEMP_NAME).write_bytes(b'{"version": 1, "files": {"a": {"offset": -3}}}')
    assert Checkpointer(tmp_path).load() == {}


def test_old_entries_are_forgotten_unless_their_file_is_open(tmp_path):
    from producers.tail.checkpointer import DONE_RETENTION_S, FileCheckpoint

    checkpointer = Checkpointer(tmp_path)
    checkpointer.load()
    long_ago = 0.0
    checkpointer.state = {
        "finished-long-ago": FileCheckpoint(10, "/x.1", True, long_ago),
        "open-but-idle": FileCheckpoint(10, "/x", False, long_ago),
        "unfinished-recent": FileCheckpoint(10, "/y", False, time.time() - DONE_RETENTION_S * 2),
    }
    checkpointer.save(active={"open-but-idle"})
    assert set(Checkpointer(tmp_path).load()) == {"open-but-idle", "unfinished-recent"}
