"""Runs things and owns data: the Ray stages (embed, mine), the sweep CLI, the leaderboard."""
