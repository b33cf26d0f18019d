"""vpc_cidr is used as written by the endpoint security group and the ssh trust patterns, and by CDK's subnet
math: a range with host bits set (CDK moved 10.42.0.1/16 to 10.43.0.0/16), one too small for the /20 node
subnet, a non-private or malformed one must fail the synth with one line naming the field."""

import json

import pytest

from ddlc.errors import UserError
from ddlc.infra.settings import load_environment

BASE = json.load(open("cdk.json"))["context"]["environments"]["dev"]


def _with_cidr(cidr):
    return load_environment({"dev": dict(BASE, vpc_cidr=cidr)}, "dev")


@pytest.mark.parametrize("cidr", ["10.42.0.1/16", "10.42.0.0/20", "10.42.0.0/24", "999.1.0.0/16", "8.8.0.0/16",
                                  "127.0.0.0/16", "10.0.0.0/8", "nonsense", "10.42.0.0"])
def test_bad_vpc_cidr_is_one_line_naming_the_field(cidr):
    with pytest.raises(UserError) as caught:
        _with_cidr(cidr)
    message = str(caught.value)
    assert "vpc_cidr" in message and "\n" not in message, message


@pytest.mark.parametrize("cidr", ["10.42.0.0/16", "192.168.0.0/19", "172.16.0.0/16", "100.64.0.0/16"])
def test_private_network_addresses_accepted(cidr):
    assert _with_cidr(cidr).vpc_cidr == cidr

