"""What a policy or a latent is worth: episodes in the game (:mod:`.episodes`), the latent
probe (:mod:`.probe`) and loading any policy by name or folder (:mod:`.policies`)."""
