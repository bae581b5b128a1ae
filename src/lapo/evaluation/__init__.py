"""What a policy or a latent is worth: episodes in the game (:mod:`.episodes`), the latent
probe (:mod:`.probe`), loading any policy by name or folder (:mod:`.policies`) and clusters of
latent actions for data without actions (:mod:`.clusters`)."""
