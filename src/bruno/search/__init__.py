"""The abliteration search: the space, the resumable study and its snapshot (`study`, `fingerprint`), one trial's
scoring (`trial`, `objectives`), several trials at once (`pool`), the confirmation of candidates on fresh prompts
(`confirm`) and the choice of the trial to export (`select`)."""
