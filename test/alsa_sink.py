"""An ALSA device that needs no sound card, for the playback tests: `cbxtest`, ALSA's `file` plugin over the `null`
device, writing every sample played to a raw file; `default` is pointed at it too. Write ASOUNDRC.format(out=...)
to `.asoundrc` in the HOME of the process that plays (PortAudio reads the ALSA configuration when it initializes)."""

ASOUNDRC = """\
pcm.cbxtest {{
    type file
    slave.pcm "null"
    file "{out}"
    format "raw"
    hint {{ show on description "Chatterbox test sink" }}
}}
pcm.!default {{ type plug slave.pcm "cbxtest" }}
"""
