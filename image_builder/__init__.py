"""Debian AMI/AKI/ARI image builder for OpenStack Glance."""
