#!/bin/sh
# Container entrypoint. With no arguments, or gunicorn options: migrate, make sure the admin
# exists, print the profile, and serve with gunicorn (its profile logic reads the container's
# CPU quota and memory limit). With a command (scripts/cleanup, flask …): run that instead, e.g.
#   docker compose run --rm ilgun scripts/cleanup --dry-run
set -eu
case "${1:-}" in
  "" | -*) ;;
  *) exec "$@" ;;
esac
if [ "${ILGUN_MIGRATE:-1}" != "0" ]; then   # 0: another replica (or a release job) migrates
  flask --app service db upgrade
fi
flask --app service create-admin
python -m service.profile
exec gunicorn -c gunicorn.conf.py "service:create_app()" "$@"
