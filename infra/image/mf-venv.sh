# /etc/profile.d/mf-venv.sh of the motionfollower-ray image (source: infra/image/mf-venv.sh).
# Login shells keep the project's venv first on PATH. The Ray cluster launcher runs every setup and start command as
# `bash --login -c -i '...'` inside the container, and Debian 12's /etc/profile sets PATH afresh for non-root users
# (the image runs as uid 1000) before it sources /etc/profile.d/*.sh: without this file `mf` is not found and
# `python` is the base image's /usr/local/bin/python, without torch or ray.
case ":${PATH}:" in
  *":/opt/venv/bin:"*) ;;
  *) PATH="/opt/venv/bin:${PATH}" ;;
esac
export PATH
