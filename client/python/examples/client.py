#!/usr/bin/env python3
"""A Reins client in Python (:class:`reins.Client`): start, watch, cancel, answer.

Examples::

    client.py --server 127.0.0.1:50051 start research --params '{"topic": "rust"}' --watch
    client.py start research --params '{"topic": "x"}' --watch --cancel-after-checkpoints 1
    client.py start research --watch --cancel-after-checkpoints 1 --hard
    client.py start research --params '{"ask": "Which sources?"}' --watch --answer arxiv
    client.py watch ID
    client.py cancel ID [--hard] [--reason TEXT] [--grace SECONDS]
    client.py answer ID TEXT
    client.py check ID

Output, one line each: ``started ID``; per watch event
``v<version> <STATE> <percent> <message> [checkpoints=N]``; ``cancel: <OUTCOME>``;
``answered``; and when a watched task ends, ``final: <the task as proto3 JSON>``.
Exit status 0, or 1 with ``error: <CODE>: <message>`` on stderr when a call fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from google.protobuf import json_format

from reins import Client, ReinsError
from reins.proto import tasks_pb2

TERMINAL = {
    tasks_pb2.TASK_STATE_COMPLETED,
    tasks_pb2.TASK_STATE_FAILED,
    tasks_pb2.TASK_STATE_CANCELLED,
}


def state_name(state: int) -> str:
    return tasks_pb2.TaskState.Name(state).removeprefix("TASK_STATE_")


def integral(obj: Any) -> Any:
    """JSON numbers travel as doubles: show integral ones as ints (``"steps": 3``)."""
    if isinstance(obj, float) and obj.is_integer() and abs(obj) < 2**53:
        return int(obj)
    if isinstance(obj, dict):
        return {key: integral(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [integral(value) for value in obj]
    return obj


def as_json(task: tasks_pb2.Task) -> str:
    """The task as proto3 JSON, on one line."""
    return json.dumps(
        integral(json_format.MessageToDict(task)), separators=(",", ":"), sort_keys=True
    )


def event_line(task: tasks_pb2.Task) -> str:
    line = f"v{task.version} {state_name(task.state)} {task.progress.fraction:4.0%}"
    if task.progress.message:
        line += f" {task.progress.message}"
    if task.partial_results:
        line += f" [checkpoints={len(task.partial_results)}]"
    if task.state == tasks_pb2.TASK_STATE_WAITING_FOR_ANSWER:
        line += f" question={task.question!r}"
    return line


def cancel(
    client: Client, task_id: str, hard: bool, reason: str, grace: float | None
) -> tasks_pb2.CancelResponse:
    if hard:
        response = client.hard_cancel(task_id, reason)
    else:
        response = client.soft_cancel(task_id, reason, grace=grace)
    outcome = tasks_pb2.CancelOutcome.Name(response.outcome).removeprefix("CANCEL_OUTCOME_")
    print(f"cancel: {outcome}", flush=True)
    return response


def watch(
    client: Client,
    task_id: str,
    *,
    cancel_after: int | None = None,
    hard: bool = False,
    reason: str = "",
    grace: float | None = None,
    answer: str | None = None,
    timeout: float | None = None,
) -> tasks_pb2.Task:
    """Prints every event of the task until it ends; cancels or answers it on the way."""
    cancelled = answered = False
    last = None
    for event in client.watch(task_id, timeout=timeout):
        last = event.task
        print(event_line(last), flush=True)
        if last.state in TERMINAL:
            break
        if cancel_after is not None and not cancelled and len(last.partial_results) >= cancel_after:
            cancelled = True
            cancel(client, task_id, hard, reason, grace)
        if (
            answer is not None
            and not answered
            and last.state == tasks_pb2.TASK_STATE_WAITING_FOR_ANSWER
        ):
            answered = True
            client.answer(task_id, answer)
            print("answered", flush=True)
    if last is None or last.state not in TERMINAL:
        raise RuntimeError("the watch ended before the task did")
    print(f"final: {as_json(last)}", flush=True)
    return last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("REINS_SERVER", "127.0.0.1:50051"))
    commands = parser.add_subparsers(dest="command", required=True)

    start = commands.add_parser("start", help="start a task")
    start.add_argument("kind")
    start.add_argument("--params", default="{}", help="a JSON object")
    start.add_argument("--description", default="")
    start.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    start.add_argument("--watch", action="store_true", help="watch it until it ends")
    start.add_argument(
        "--cancel-after-checkpoints",
        type=int,
        metavar="N",
        help="with --watch: cancel once the task has N partial results",
    )
    start.add_argument("--answer", help="with --watch: answer its question with this")
    start.add_argument("--timeout", type=float, help="with --watch: give up after SECONDS")

    watch_cmd = commands.add_parser("watch", help="watch a task until it ends")
    watch_cmd.add_argument("task_id")
    watch_cmd.add_argument("--timeout", type=float)

    cancel_cmd = commands.add_parser("cancel", help="cancel a task")
    cancel_cmd.add_argument("task_id")

    for sub in (start, cancel_cmd):
        sub.add_argument("--hard", action="store_true", help="hard cancel: CANCELLED now")
        sub.add_argument("--reason", default="")
        sub.add_argument("--grace", type=float, metavar="SECONDS", help="soft cancel grace period")

    answer_cmd = commands.add_parser("answer", help="answer a task's question")
    answer_cmd.add_argument("task_id")
    answer_cmd.add_argument("answer")

    check = commands.add_parser("check", help="print a task as JSON")
    check.add_argument("task_id")

    args = parser.parse_args(argv)
    with Client(args.server) as client:
        try:
            if args.command == "start":
                labels = dict(label.split("=", 1) for label in args.label)
                task = client.start(
                    args.kind,
                    json.loads(args.params),
                    description=args.description,
                    labels=labels,
                )
                print(f"started {task.id}", flush=True)
                if args.watch:
                    watch(
                        client,
                        task.id,
                        cancel_after=args.cancel_after_checkpoints,
                        hard=args.hard,
                        reason=args.reason,
                        grace=args.grace,
                        answer=args.answer,
                        timeout=args.timeout,
                    )
            elif args.command == "watch":
                watch(client, args.task_id, timeout=args.timeout)
            elif args.command == "cancel":
                cancel(client, args.task_id, args.hard, args.reason, args.grace)
            elif args.command == "answer":
                client.answer(args.task_id, args.answer)
                print("answered", flush=True)
            elif args.command == "check":
                print(as_json(client.check(args.task_id)))
        except ReinsError as err:
            reason = f" [{err.reason}]" if err.reason else ""
            print(f"error: {err.code().name}: {err.details()}{reason}", file=sys.stderr)
            return 1
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
