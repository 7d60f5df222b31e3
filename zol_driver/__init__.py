"""ZFS-on-Linux iSCSI volume driver for OpenStack Cinder."""
