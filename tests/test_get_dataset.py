"""get_dataset.sh as a user runs it: all three subsets beside the script, extra arguments passed on."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mirror import blob_id_for, python_source_for
from s3servers import moto_server, put_blobs

SCRIPT = Path(__file__).resolve().parents[1] / "get_dataset.sh"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A folder holding get_dataset.sh and a .venv where smollm-corpus is already installed."""
    shutil.copy(SCRIPT, tmp_path / "get_dataset.sh")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    return tmp_path


def run(checkout: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(checkout / "get_dataset.sh"), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_fetches_the_three_subsets_beside_the_script(checkout, mirror):
    with moto_server() as endpoint:
        put_blobs(endpoint, "gds-bucket", {blob_id_for(i): python_source_for(i).encode() for i in range(40)})
        result = run(checkout, "--source", str(mirror), "--limit", "30", "-q", "--s3-endpoint-url", endpoint,
                     "--bucket", "gds-bucket", env=AWS)
    assert result.returncode == 0, result.stderr
    for subset in ("cosmopedia-v2", "python-edu", "fineweb-edu-dedup"):
        assert (checkout / subset / "input.txt").stat().st_size > 0
    assert (checkout / "python-edu" / "input.txt").read_text().startswith(python_source_for(0))


def test_exits_non_zero_naming_the_subsets_that_failed(checkout, mirror):
    # No S3 endpoint answers: python-edu fails, the text subsets still land.
    result = run(checkout, "--source", str(mirror), "--limit", "5", "-q", "--s3-endpoint-url", "http://127.0.0.1:9",
                 env=AWS)
    assert result.returncode == 1
    assert "get_dataset.sh: failed: python-edu; fix the cause above and run again to resume" in result.stderr
    assert (checkout / "cosmopedia-v2" / "input.txt").exists() and (checkout / "fineweb-edu-dedup" / "input.txt").exists()
