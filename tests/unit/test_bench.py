"""make bench's reading of a stamped apt-get install: its stages, one line each."""

from __future__ import annotations

from tests.bench.bench import apt_stages

DEBIAN_13 = """\
0.100 Reading package lists...
0.900 Preparing to unpack .../00-ucf_3.0052_all.deb ...
1.400 Preparing to unpack .../matrix-stack_0.1.0_all.deb ...
2.000 Setting up ucf (3.0052) ...
2.500 Setting up matrix-stack (0.1.0) ...
9.500 Processing triggers for libc-bin (2.41-12) ...
9.700 exit 0
"""


def test_each_stage_lasts_until_the_next_one_starts() -> None:
    assert apt_stages(DEBIAN_13) == [
        "resolve dependencies, preconfigure (matrix-stack's config script): 0.9 s",
        "unpack (2 packages): 1.1 s",
        "set up the dependencies (1 packages): 0.5 s",
        "matrix-stack's postinst: 7.0 s",
        "triggers: 0.2 s",
    ]


def test_a_stage_that_did_not_happen_lasts_nothing() -> None:
    without_triggers = DEBIAN_13.replace("9.500 Processing triggers for libc-bin (2.41-12) ...\n",
                                         "")
    # Triggers run before matrix-stack is set up do not end its postinst.
    early = without_triggers.replace("2.000 Setting up ucf", "1.900 Processing triggers for "
                                     "man-db\n2.000 Setting up ucf")

    assert apt_stages(early)[3:] == ["matrix-stack's postinst: 7.2 s", "triggers: 0.0 s"]
