"""What the profile charges to requests."""

from __future__ import annotations

from bench.profile import analyse

HANDLE = "handle_request (gunicorn/workers/base_async.py:100)"
RUN_BATCH = "GroupCommitter.run_batch (app/inventory/group_commit.py:190)"
WAITING = "GroupCommitter._run (app/inventory/group_commit.py:170);get (queue.py:10)"


def test_the_committer_threads_batches_count_and_its_waiting_does_not(tmp_path):
    collapsed = tmp_path / "cpu.txt"
    collapsed.write_text(
        "\n".join(
            [
                f"process 1;{HANDLE};Parser.parse (webargs/core.py:1) 6",
                f"process 1;GroupCommitter._run (app/inventory/group_commit.py:170);{RUN_BATCH};execute (psycopg/cursor.py:1) 3",
                f"process 1;{WAITING} 50",
                "process 1;run (gunicorn/arbiter.py:1) 40",
            ]
        )
    )
    profile = analyse("checkout", collapsed)
    assert profile.samples == 9
    assert profile.by_category["psycopg (driver)"] == 3
    assert profile.by_category["marshmallow / webargs / flask-smorest"] == 6
    assert profile.by_step["group commit (committer thread: the batch's SQL, kept answers, events)"] == 3
