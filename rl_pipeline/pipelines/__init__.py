"""Drivers: one top-to-bottom loop per stage (sft, grpo, distill) and the multi-stage pipeline."""
