"""`python -m fms_dgt.public`: the entry point DiGiT users know; same CLI as `python -m fms_dgt`."""
