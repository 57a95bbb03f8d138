"""Operator commands: status, trace, control, reload, reset, demo, doctor, keys, cards check/approve,
data, process supervision."""
