"""The Step Functions definition is generated from the stage list and runs only commands the CLI accepts."""

from __future__ import annotations

import json
import re

from services.trainer.cli import build_parser, main
from services.trainer.stepfunctions import STAGES, definition

INPUT = {
    "job_name": "j",
    "role_arn": "arn:aws:iam::1:role/r",
    "dataset_s3": "s3://d/",
    "output_s3": "s3://o/",
    "image": "1.dkr.ecr/llm:1",
    "import_job_name": "i",
    "model_name": "m",
    "weights_s3": "s3://w/",
    "version": "v3",
}


def command_of(state: dict) -> list[str]:
    override = state["Parameters"]["Overrides"]["ContainerOverrides"][0]
    if "Command" in override:
        return override["Command"]
    inner = re.fullmatch(r"States\.Array\((.*)\)", override["Command.$"]).group(1)
    out = []
    for part in (p.strip() for p in inner.split(",")):
        out.append(part.strip("'") if part.startswith("'") else INPUT[part.removeprefix("$.")])
    return out


def test_definition_is_a_well_formed_state_machine(capsys) -> None:
    asl = definition("lineguard", "arn:aws:ecs:us-east-1:1:task-definition/advisor:7", subnets=["subnet-1"])
    states = asl["States"]
    assert asl["StartAt"] == STAGES[0][0]
    targets = {asl["StartAt"]}
    for name, state in states.items():
        for key in ("Next", "Default"):
            if key in state:
                assert state[key] in states, (name, state[key])
                targets.add(state[key])
        for choice in state.get("Choices", []):
            assert choice["Next"] in states
            targets.add(choice["Next"])
        for catch in state.get("Catch", []):
            assert catch["Next"] in states
            targets.add(catch["Next"])
        assert state["Type"] in ("Task", "Choice", "Succeed", "Fail")
    assert targets == set(states)  # every state reachable, none dangling
    order = [n for n, s in states.items() if s["Type"] == "Task"]
    assert order == [n for n, _ in STAGES] == ["Prepare", "Finetune", "Import", "Evaluate", "Promote"]
    assert (
        states["PromoteExited"]["Default"] == "KeptProduction"
        and states["EvaluateExited"]["Default"] == "Failed"
    )
    parser = build_parser()
    for name in order:
        command = command_of(states[name])
        assert command[0] == "lineguard-train"
        parsed = parser.parse_args(command[1:])  # exits (SystemExit) if the CLI would refuse it
        assert parsed.command == command[1]
    assert main(["asl", "--cluster", "c", "--task-definition", "td"]) == 0
    assert json.loads(capsys.readouterr().out)["StartAt"] == "Prepare"
