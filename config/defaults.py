"""Every setting with its default. Each can be set by an environment variable of the same
name (or in a ``.env`` file in the working directory); test configs override both."""

# --- where things live ---------------------------------------------------------------------
ILGUN_DATA = "./instance"          # database, workspaces and generated secrets
DATABASE_URL = ""                  # default: sqlite:///$ILGUN_DATA/ilgun.db; postgresql+psycopg://... for scale-out
FILES_ROOT = ""                    # default: $ILGUN_DATA/files (a shared filesystem when several hosts serve)

# --- secrets: generated into $ILGUN_DATA/secrets.json on first start when left empty -------
SECRET_KEY = ""
JWT_SECRET_KEY = ""
JWT_ACCESS_TOKEN_EXPIRES = 900             # seconds (15 min)
JWT_REFRESH_TOKEN_EXPIRES = 30 * 24 * 3600  # seconds (30 days)

# --- accounts ------------------------------------------------------------------------------
ALLOW_REGISTRATION = True
ILGUN_ADMIN_USERNAME = "admin"
ILGUN_ADMIN_PASSWORD = ""          # empty: `make run` generates one and prints it once
MIN_PASSWORD_LENGTH = 8

# --- the job engine ------------------------------------------------------------------------
MAX_WORKERS = 2                    # executor slots per process (gunicorn.conf.py sets it per host)
WEB_THREADS = 2                    # request threads per process (gunicorn.conf.py sets it from the profile)
# Database connections per process: request threads + executor slots + claim loop + monitor,
# plus spare (0 = that sum + 2). PostgreSQL holds workers x this (+1 listener each) per host:
# keep hosts x workers x (DB_POOL_SIZE + 1) below max_connections.
DB_POOL_SIZE = 0
LEASE_SECONDS = 30.0               # a running job's lease; renewed every quarter of it
POLL_INTERVAL = 0.5                # how soon other workers notice a job submitted elsewhere
SWEEP_INTERVAL = 5.0               # how often expired leases are looked for
MAX_QUEUED_PER_USER = 200          # over this: 429 QUEUE_FULL with Retry-After
MAX_QUEUED_TOTAL = 20000           # over this: 503 SERVICE_BUSY with Retry-After
QUEUE_RETRY_AFTER = 5              # seconds, sent in Retry-After
# Per-kind overrides, JSON in the environment: {"kind": {"per_user": n, "global": n,
# "timeout": seconds, "over_limit": "queue" | "refuse"}}
KIND_LIMITS = {}
SLEEP_KIND_FOR_EVERYONE = False    # the sleep kind is admin-only unless this is set
SHUTDOWN_GRACE = 25.0              # seconds running jobs get to finish when a worker leaves
TIMEOUT_GRACE = 30.0               # a job past its timeout that ignores the stop is failed after this
START_DISPATCHER = False           # start a dispatcher in create_app (gunicorn's hooks do it otherwise)

# --- HTTP ------------------------------------------------------------------------------------
MAX_CONTENT_LENGTH = 64 * 1024 * 1024   # largest request body
MAX_JSON_BYTES = 1024 * 1024            # largest JSON body
MAX_JSON_DEPTH = 32                     # deeper JSON is refused
MAX_PAGE_SIZE = 100

# --- rate limits (flask-limiter) ---------------------------------------------------------------
RATELIMIT_ENABLED = True
RATELIMIT_STORAGE_URI = ""         # default: the app's database (ilgun+sqlite:///...); redis://... for multi-host
RATELIMIT_DEFAULT = "600 per minute"
RATELIMIT_LOGIN = "10 per minute"  # per client address and username: slows password guessing
RATELIMIT_SUBMIT = "120 per minute"

# --- the download kind -----------------------------------------------------------------------
DOWNLOAD_ALLOW_PRIVATE_URLS = False       # env ILGUN_ALLOW_PRIVATE_URLS=1: allow private/loopback targets
DOWNLOAD_MAX_BYTES = 1024 * 1024 * 1024
DOWNLOAD_CONNECT_TIMEOUT = 10.0
DOWNLOAD_READ_TIMEOUT = 30.0
DOWNLOAD_MAX_REDIRECTS = 5
DOWNLOAD_USER_AGENT = "ilgun-downloader/0.1"

LOG_LEVEL = "INFO"
LOG_FORMAT = "json"                # json: one object per line (ts, level, logger, message, request_id,
                                   # user_id, job_id, pid, exc); text: for a terminal

# --- cleanup (scripts/cleanup, run by cron) --------------------------------------------------
# Days a finished job (its record and files) is kept, per final status.
RESULT_TTL_DAYS = {"succeeded": 7, "failed": 30, "cancelled": 7}
CLEANUP_GRACE_SECONDS = 3600        # orphan folders, partial and lock files younger than this stay
USER_DISK_QUOTA_BYTES = 5 * 1024 ** 3   # per user; the cleanup reports users above it
