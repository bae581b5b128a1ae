"""Reinforcement learning: one PPO (:mod:`.ppo`) and the PPO demonstrators that record the
datasets (:mod:`.expert`)."""
