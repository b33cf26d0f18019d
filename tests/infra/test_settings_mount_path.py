"""fsx_lustre.mount_path is written unquoted into the root boot script and /etc/fstab: anything but a plain
absolute path (spaces, ';', '..', a system directory) must fail the synth with one line naming the field."""

import json

import pytest

from ddlc.errors import UserError
from ddlc.infra.settings import load_environment

BASE = json.load(open("cdk.json"))["context"]["environments"]["prod"]


def _with_mount(path):
    env = dict(BASE, fsx_lustre=dict(BASE["fsx_lustre"], mount_path=path))
    return load_environment({"prod": env}, "prod")


@pytest.mark.parametrize("path", ["relative path", "fsx", "/fsx; reboot", "/fsx $(id)", "/a/../etc", "/",
                                  "/etc", "/usr/local/fsx", "/opt", "/home", "/fsx'x"])
def test_unsafe_mount_path_is_one_line_naming_the_field(path):
    with pytest.raises(UserError) as caught:
        _with_mount(path)
    message = str(caught.value)
    assert "mount_path" in message and "\n" not in message, message


@pytest.mark.parametrize("path", ["/fsx", "/fsx/scratch", "/mnt/fsx", "/data-1"])
def test_plain_mount_paths_still_accepted(path):
    assert _with_mount(path).fsx_lustre.mount_path == path
