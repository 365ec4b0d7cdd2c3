"""This machine's client state: the finetune home folder and its registry of run handles, and the identity of
local processes (a PID with its start time and boot, so a reused PID is never mistaken for ours)."""
