"""Hooks the Cinder volume manager consults, which decide whole flows."""
from zol_driver import image_transfer
from zol_driver.driver import ZFSonLinuxISCSIDriver


def test_revert_takes_no_temporary_snapshot():
    """The manager's safety snapshot would be the newest one and make `zfs rollback` refuse."""
    assert ZFSonLinuxISCSIDriver.snapshot_revert_use_temp_snapshot(object()) is False


def test_image_copies_use_the_userspace_initiator_path():
    """No kernel iSCSI initiator on these hosts: os-brick's attach path cannot work."""
    for name in ("copy_image_to_volume", "copy_volume_to_image"):
        impl = getattr(ZFSonLinuxISCSIDriver, name)
        assert impl is getattr(image_transfer.LibiscsiImageTransferMixin, name), name
