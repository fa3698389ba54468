#!/bin/sh
# Container entrypoint: migrate, make sure the admin exists, then serve with the host's profile.
set -eu
flask --app service db upgrade
flask --app service create-admin
python -m service.profile
exec gunicorn -c gunicorn.conf.py "service:create_app()" "$@"
