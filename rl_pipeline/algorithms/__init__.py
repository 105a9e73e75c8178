"""Pure algorithm functions (no Ray, no I/O): GRPO math and the SFT loss."""
