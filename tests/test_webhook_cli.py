"""``modeltrail webhook`` and ``modeltrail promotion`` from the shell."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

import modeltrail as mt
from modeltrail.cli import main
from tests.conftest import ManualClock
from tests.helpers import Endpoint, verify
from tests.helpers import cli as _cli


def test_webhook_add_run_deliveries_and_rm(
    home: Path,
    clock: ManualClock,
    endpoint: Endpoint,
) -> None:
    url = endpoint.url
    endpoint.statuses = [204]
    with mt.open(home, actor="alice", namespace="team", clock=clock) as reg:
        reg.log_version("m", {"w": b"0"})
    added = _cli(home, "webhook", "add", url, "--alias", "production", "--model", "m", "--json")
    assert added.exit_code == 0, added.output
    created = json.loads(added.output)
    hook_id, secret = created["webhook"]["webhook_id"], created["secret"]
    assert secret.startswith("whsec_")

    assert _cli(home, "alias", "set", "m:v0", "production").exit_code == 0
    ran = _cli(home, "webhook", "run", "--idle-timeout", "0.2")
    assert ran.exit_code == 0, ran.output
    [received] = endpoint.received
    assert verify(secret, received.headers, received.body)["data"]["data"]["alias"] == "production"

    listed = json.loads(_cli(home, "webhook", "list", "--json").output)
    assert [(h["webhook_id"], h["delivered"], h["owner"]) for h in listed] == [
        (hook_id, 1, "team/m")
    ]
    deliveries = json.loads(_cli(home, "webhook", "deliveries", hook_id, "--json").output)
    assert [(d["outcome"], d["status"]) for d in deliveries] == [("delivered", 204)]
    listed_table = CliRunner().invoke(
        main, ["--home", str(home), "webhook", "list"], env={"COLUMNS": "200"}
    )
    assert listed_table.output.startswith("webhook")
    assert "alias 'production' of team/m " in listed_table.output

    assert _cli(home, "webhook", "rm", hook_id).exit_code == 0
    assert json.loads(_cli(home, "webhook", "list", "--json").output) == []
    again = _cli(home, "webhook", "rm", hook_id)
    assert again.exit_code == 2
    assert "removed already" in again.output


def test_a_secret_given_is_not_printed_and_a_bad_one_is_refused(home: Path) -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    added = _cli(home, "webhook", "add", "http://127.0.0.1:1/", "--secret", secret)
    assert added.exit_code == 0
    assert secret not in added.output
    bad = _cli(home, "webhook", "add", "http://127.0.0.1:1/", "--secret", "s3cret")
    assert bad.exit_code == 2
    assert "InvalidInput: webhook secret is invalid" in bad.output


def test_promotion_rules_from_the_shell(home: Path, clock: ManualClock) -> None:
    with mt.open(home, actor="alice", namespace="team", clock=clock) as reg:
        reg.log_version("m", {"w": b"0"})
        reg.log_version("m", {"w": b"1"})
    rules = _cli(home, "promotion", "set", "m", "--stages", "staging,production")
    assert rules.output.strip() == "team/m: stages staging → production  protected -"
    _cli(home, "promotion", "set", "m", "--stages", "staging,production", "--protect", "production")
    shown = json.loads(_cli(home, "promotion", "show", "m", "--json").output)
    assert (shown["stages"], shown["protected"]) == (["staging", "production"], ["production"])

    refused = _cli(home, "alias", "set", "m:v0", "production")
    assert refused.exit_code == 2
    assert "PromotionRefused" in refused.output
    assert "never held 'staging'" in refused.output
    audit = _cli(home, "audit", "--type", "AliasMoveRefused", "--format", "jsonl")
    assert json.loads(audit.output)["data"]["rule"] == "stages"
