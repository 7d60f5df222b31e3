"""bench/image_build: where each tool spent its time (parsed, so it must parse right)."""
from __future__ import annotations

from bench import image_build

DIB_LOG = """2026-12-02 07:40:01.000 | dib-run-parts ------ PROFILING ------
2026-12-02 07:40:01.000 | dib-run-parts Target: root.d
2026-12-02 07:40:01.000 | dib-run-parts Script                                   Seconds
2026-12-02 07:40:01.000 | dib-run-parts ---------------------------------------  ----------
2026-12-02 07:40:01.000 | dib-run-parts 01-ccache                                     0.021
2026-12-02 07:40:01.000 | dib-run-parts 50-debootstrap                              100.500
2026-12-02 07:40:01.000 | dib-run-parts ----- END PROFILING -----
2026-12-02 07:40:02.000 | Setting up python3-distro (1.8.0-1) ...
2026-12-02 07:40:02.000 | Unpacking foo 2.000
2026-12-02 07:41:01.000 | dib-run-parts Target: install.d
2026-12-02 07:41:01.000 | dib-run-parts 10-kernel                                    20.250
2026-12-02 07:41:01.000 | dib-run-parts ----- END PROFILING -----
2026-12-02 07:42:01.000 | dib-run-parts Target: root.d
2026-12-02 07:42:01.000 | dib-run-parts 90-more                                       1.000
"""


def test_dib_phases_sum_each_profiling_table_per_phase():
    assert image_build.dib_phases(DIB_LOG) == {"root.d": 101.5, "install.d": 20.2}


def test_ours_stages_split_the_install():
    manifest = {"timings": {"install": 100.0, "hash": 4.0, "total": 106.0},
                "install_steps": {"mmdebstrap_seconds": 80.0, "mkfs_seconds": 9.5,
                                  "profile_seconds": {"update-initramfs": 30.0}}}
    assert image_build.ours_stages(manifest) == {
        "install": 100.0, "hash": 4.0, "install.mmdebstrap": 80.0, "install.mkfs": 9.5,
        "install.profile.update-initramfs": 30.0}
    assert image_build.ours_stages({"timings": {"install": 1.0, "total": 1.0},
                                    "install_steps": None}) == {"install": 1.0}
