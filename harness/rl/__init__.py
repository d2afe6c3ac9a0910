"""Reinforcement learning on Atari: the agent loop that trains a method's encoder beside a DQN
(``sslbench rl``; CURL's use as an auxiliary loss). A sibling of ``harness.train`` (the image trainer):
it reads the environment from ``harness.data.atari``, the method through its plugin contract and the
encoder from ``harness.models``, and reports through a callback, never importing the tracking layer.
"""
