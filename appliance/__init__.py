"""Mailfleet: a mail appliance for a fleet deployed by Ansible (console script `mailfleet`)."""
