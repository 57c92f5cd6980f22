#!/usr/bin/env bash
# Install or update bollmin as two systemd services on Ubuntu 22.04/24.04 or Debian 12.
#
# Usage: sudo ./auto_deploy.sh [COMMAND]
#
#   (none), install     install or update from this folder, restart, health check
#   status              services, heartbeat, market data, mode (secrets masked)
#   logs [ARGS...]      last 100 log lines of both services (ARGS go to journalctl, e.g. -f)
#   restart             re-read AUTO_RESTART from the config, restart both services, health check
#   stop                stop both services (they start again at boot)
#   uninstall [--purge] remove the services and /opt/bollmin; config, secrets, data and logs
#                       are kept unless --purge (which also removes the bollmin user)
#   -h, --help          this help (needs no root, changes nothing)
#
# Layout: code /opt/bollmin (venv in /opt/bollmin/venv), settings /etc/bollmin/config.py
# (created once, never overwritten), secrets /etc/bollmin/bollmin.env (the bot's: exchange keys,
# notification URLs) and /etc/bollmin/dashboard.env (the dashboard password), root:bollmin 0640,
# data /var/lib/bollmin, log file /var/log/bollmin (and journald), services bollmin.service
# and bollmin-dashboard.service running as the system user bollmin (the dashboard never gets the
# bot's secrets file). Running it again is an update: config, secrets and data are kept.
# Details: docs/deploy.zh.md
set -euo pipefail

readonly APP_USER=bollmin
readonly CODE_DIR=/opt/bollmin
readonly VENV_DIR=$CODE_DIR/venv
readonly CONF_DIR=/etc/bollmin
readonly CONF_FILE=$CONF_DIR/config.py
readonly ENV_FILE=$CONF_DIR/bollmin.env
readonly WEB_ENV_FILE=$CONF_DIR/dashboard.env
readonly DATA_DIR=/var/lib/bollmin
readonly LOG_DIR=/var/log/bollmin
readonly UNIT_DIR=/etc/systemd/system
readonly BOT_UNIT=bollmin.service
readonly WEB_UNIT=bollmin-dashboard.service
readonly RESTART_DROPIN=$UNIT_DIR/$BOT_UNIT.d/10-restart.conf
readonly LOCK_FILE=/run/lock/bollmin-deploy.lock
# Seconds the health check waits for the bot's first fresh heartbeat / for market data.
HEALTH_TIMEOUT=${BOLLMIN_HEALTH_TIMEOUT:-90}
MARKET_TIMEOUT=${BOLLMIN_MARKET_TIMEOUT:-20}
SRC_DIR=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
readonly SRC_DIR
# Commands run as the service user get this environment only (nothing leaks from sudo's).
readonly CLEAN_ENV=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8)

STAGE=""       # the new code tree while an install is in progress (removed on failure)
TMP_FILES=()   # scratch files removed on exit

say() { printf 'bollmin: %s\n' "$*"; }
warn() { printf 'bollmin: WARNING: %s\n' "$*" >&2; }
die() { printf 'bollmin: ERROR: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }

cleanup() {
  if [ -n "$STAGE" ] && [ -d "$STAGE" ]; then
    # An interrupted install: put the old code and the venv back where the running service expects them.
    if [ ! -e "$CODE_DIR" ] && [ -d "$CODE_DIR.old.$$" ]; then
      mv "$CODE_DIR.old.$$" "$CODE_DIR"
    fi
    if [ -d "$STAGE/venv" ] && [ ! -e "$VENV_DIR" ] && [ -d "$CODE_DIR" ]; then
      mv "$STAGE/venv" "$VENV_DIR"
    fi
    rm -rf "$STAGE"
  fi
  if [ "${#TMP_FILES[@]}" -gt 0 ]; then
    rm -f "${TMP_FILES[@]}"
  fi
}

scratch() {  # scratch FILE-PREFIX -> path of a new temp file removed on exit
  local f
  f=$(mktemp "/tmp/$1.XXXXXX")
  TMP_FILES+=("$f")
  printf '%s' "$f"
}

need_root() {  # need_root COMMAND
  [ "$(id -u)" -eq 0 ] || die "run it as root: sudo $0 $1"
  [ -d /run/systemd/system ] || die "systemd is not running on this machine (is this a container without systemd?)"
  trap cleanup EXIT
  case $1 in
    status | logs) ;;  # read-only: fine while a deploy runs
    *)
      mkdir -p "$(dirname "$LOCK_FILE")"
      exec 9>"$LOCK_FILE"
      flock -n 9 || die "another auto_deploy.sh is running"
      ;;
  esac
}

as_service_user() {  # run a command as bollmin with a clean environment (setpriv: no PAM session noise)
  setpriv --reuid="$APP_USER" --regid="$APP_USER" --init-groups --inh-caps=-all -- "${CLEAN_ENV[@]}" "$@"
}

# ---- Python ------------------------------------------------------------------------------------

find_python() {  # prints an interpreter >= 3.11 that can create a venv
  local candidate
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

ensure_python() {
  local py packages
  if py=$(find_python); then
    printf '%s' "$py"
    return 0
  fi
  # Debian 12 and Ubuntu 24.04 ship a new enough python3 but not its venv module; Ubuntu 22.04
  # has 3.10, and python3.11 in its universe component.
  if command -v python3 >/dev/null 2>&1 &&
     python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    packages=(python3-venv)
  else
    packages=(python3.11 python3.11-venv)
  fi
  command -v apt-get >/dev/null 2>&1 || die "need Python >= 3.11 with venv; install it and run again"
  say "installing ${packages[*]} (apt-get)" >&2
  apt-get update -qq >&2 || warn "apt-get update failed; trying the install anyway"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2 ||
    die "could not install ${packages[*]}; on Ubuntu enable 'universe' (sudo add-apt-repository universe) and retry"
  py=$(find_python) || die "Python >= 3.11 with venv still not found after installing ${packages[*]}"
  printf '%s' "$py"
}

ensure_venv() {  # ensure_venv REQUIREMENTS_FILE
  local py stamp want
  if [ -x "$VENV_DIR/bin/python" ] &&
     ! "$VENV_DIR/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
    warn "the venv in $VENV_DIR is broken or too old; recreating it"
    rm -rf "$VENV_DIR"
  fi
  if [ ! -x "$VENV_DIR/bin/python" ]; then
    py=$(ensure_python)
    say "creating the venv in $VENV_DIR with $("$py" -V 2>&1)"
    mkdir -p "$CODE_DIR"
    "$py" -m venv "$VENV_DIR"
  fi
  # Reinstall only when requirements.txt or the interpreter changed (a fast, offline update).
  want="$(sha256sum <"$1" | cut -d' ' -f1) $("$VENV_DIR/bin/python" -V 2>&1)"
  stamp=$(cat "$VENV_DIR/.bollmin-requirements" 2>/dev/null || true)
  if [ "$stamp" != "$want" ]; then
    say "installing the pinned requirements (pip; a minute or two the first time)"
    "$VENV_DIR/bin/python" -m pip install --disable-pip-version-check --no-input --quiet -r "$1" ||
      die "pip could not install the requirements (network? see the messages above)"
    printf '%s\n' "$want" >"$VENV_DIR/.bollmin-requirements"
  else
    say "requirements unchanged; venv kept"
  fi
}

# ---- configuration -----------------------------------------------------------------------------

# The probe runs as the service user with the secrets from the env file, exactly as the
# service will see them, validates everything once and prints KEY=VALUE lines (no secrets).
read -r -d '' PROBE_PY <<'PY' || true
import pathlib, sqlite3, sys, time
import config

def read_env(path):
    env = {}
    for line in pathlib.Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key, value = key.strip().removeprefix("export ").strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env

conf_file, env_file, web_env_file, data_dir, what = sys.argv[1:6]
try:
    env = read_env(env_file)
    if pathlib.Path(web_env_file).exists():
        env.update(read_env(web_env_file))
    cfg = config.load_config(conf_file, env=env)
except config.ConfigError as err:
    sys.exit(f"{err}")
except OSError as err:
    sys.exit(f"cannot read {err.filename}: {err.strerror}")
db = pathlib.Path(data_dir, cfg.DB_PATH)  # relative paths are relative to WorkingDirectory
out = {"AUTO_RESTART": cfg.AUTO_RESTART, "MODE": cfg.mode, "DB": db, "LOG_FILE": pathlib.Path(data_dir, cfg.LOG_FILE),
       "DASHBOARD_HOST": cfg.DASHBOARD_HOST, "DASHBOARD_PORT": cfg.DASHBOARD_PORT,
       "DASHBOARD_PASSWORD": "set" if cfg.DASHBOARD_PASSWORD else "not set",
       "API_KEY": "set" if cfg.API_KEY else "not set", "API_SECRET": "set" if cfg.API_SECRET else "not set",
       "NOTIFY": " ".join(config.masked(cfg)["NOTIFY_URLS"]) or "off",
       "SYMBOL": cfg.SYMBOL, "INTERVAL": cfg.INTERVAL}
if what == "status":
    try:
        conn = sqlite3.connect(db.as_uri() + "?mode=ro", uri=True, timeout=2)
        rows = dict(conn.execute("SELECT key, value FROM status"))
        conn.close()
    except sqlite3.Error as err:
        rows = {"db_error": str(err)}
    now_ms = time.time() * 1000
    for key in ("heartbeat_ms", "last_message_ms"):
        try:
            out[key.replace("_ms", "_age_s")] = f"{(now_ms - float(rows[key])) / 1000:.1f}"
        except (KeyError, TypeError, ValueError):
            out[key.replace("_ms", "_age_s")] = ""
    for key in ("connection", "state", "mode", "price", "db_error"):
        out["db_" + key if not key.startswith("db_") else key] = rows.get(key) or ""
for key, value in out.items():
    print(f"{key}={' '.join(str(value).split())}")
PY

declare -A CFG=()

probe() {  # probe CODE_DIR [status]: fills CFG; on a bad config prints its one-line message and fails
  local code=$1 what=${2:-config} out err line
  out=$(scratch bollmin-probe)
  err=$(scratch bollmin-probe-err)
  if ! (cd "$code" && as_service_user "$VENV_DIR/bin/python" -E -s -c "$PROBE_PY" \
          "$CONF_FILE" "$ENV_FILE" "$WEB_ENV_FILE" "$DATA_DIR" "$what") >"$out" 2>"$err"; then
    line=$(grep -v '^[[:space:]]*$' "$err" | tail -n 1 || true)
    printf 'bollmin: ERROR: configuration: %s\n' "${line:-the settings could not be read}" >&2
    printf 'bollmin: fix %s (or %s, %s) and run this again; the running services were not changed\n' \
      "$CONF_FILE" "$ENV_FILE" "$WEB_ENV_FILE" >&2
    return 1
  fi
  CFG=()
  while IFS='=' read -r key value; do
    if [ -n "$key" ]; then
      CFG[$key]=$value
    fi
  done <"$out"
}

ensure_user() {
  if ! getent group "$APP_USER" >/dev/null; then
    groupadd --system "$APP_USER"
  fi
  if ! id -u "$APP_USER" >/dev/null 2>&1; then
    say "creating the system user $APP_USER (no login)"
    useradd --system --gid "$APP_USER" --home-dir "$DATA_DIR" --no-create-home \
      --shell "$(command -v nologin || echo /usr/sbin/nologin)" --comment "bollmin trading bot" "$APP_USER"
  fi
}

ensure_dirs() {
  install -d -m 0750 -o root -g "$APP_USER" "$CONF_DIR"
  install -d -m 0750 -o "$APP_USER" -g "$APP_USER" "$DATA_DIR" "$LOG_DIR"
  # Files a person created as root (e.g. the SQLite -shm of a 'sudo sqlite3') would lock the bot out.
  chown -R "$APP_USER:$APP_USER" "$DATA_DIR" "$LOG_DIR"
}

create_config() {  # create_config CODE_DIR: the default settings file with server paths
  local code=$1 tmp
  tmp=$(mktemp "$CONF_DIR/.config.py.XXXXXX")
  TMP_FILES+=("$tmp")
  {
    printf '# %s — created by auto_deploy.sh on %s; updates never overwrite it.\n' "$CONF_FILE" "$(date -u +%F)"
    printf '# After editing: sudo %s/auto_deploy.sh restart   (validates it, re-applies AUTO_RESTART)\n#\n' \
      "$CODE_DIR"
    (cd "$code" && "$VENV_DIR/bin/python" -E -s config.py)
  } >"$tmp"
  sed -i -e "s|^DB_PATH = .*|DB_PATH = '$DATA_DIR/bollmin.db'|" \
         -e "s|^LOG_FILE = .*|LOG_FILE = '$LOG_DIR/bollmin.log'|" "$tmp"
  if ! grep -q "^DB_PATH = '$DATA_DIR/bollmin.db'$" "$tmp" ||
     ! grep -q "^LOG_FILE = '$LOG_DIR/bollmin.log'$" "$tmp"; then
    die "the default settings file has no DB_PATH/LOG_FILE line to point at $DATA_DIR and $LOG_DIR"
  fi
  chown root:"$APP_USER" "$tmp"
  chmod 0640 "$tmp"
  mv "$tmp" "$CONF_FILE"
  say "created $CONF_FILE (paper trading; edit it, then: sudo ./auto_deploy.sh restart)"
}

create_env_file() {  # the bot's secrets
  local tmp
  tmp=$(mktemp "$CONF_DIR/.bollmin.env.XXXXXX")
  TMP_FILES+=("$tmp")
  chmod 0640 "$tmp"
  cat >"$tmp" <<EOF
# bollmin secrets of the trading bot, read by systemd (EnvironmentFile=) for bollmin.service only:
# the dashboard never gets them. Keep it root:bollmin 0640.
# KEY=value per line, no quotes needed, no spaces around '='. After editing: sudo ./auto_deploy.sh restart
#
# Binance API key: enable only "Futures" trading, never withdrawals, and restrict it to this
# server's IP address. Needed only when PAPER_TRADING = False in config.py.
BINANCE_API_KEY=
BINANCE_API_SECRET=
# Notifications (fills, crashes, reconciliation, daily summary): Apprise URLs separated by spaces,
# e.g. tgram://BOT_TOKEN/CHAT_ID or dingtalk://TOKEN (README: 通知). Empty: no notifications.
BOLLMIN_NOTIFY_URLS=
EOF
  chown root:"$APP_USER" "$tmp"
  mv "$tmp" "$ENV_FILE"
  say "created $ENV_FILE (API keys empty)"
}

write_web_env_file() {  # write_web_env_file PASSWORD NOTE
  local tmp
  tmp=$(mktemp "$CONF_DIR/.dashboard.env.XXXXXX")
  TMP_FILES+=("$tmp")
  chmod 0640 "$tmp"
  cat >"$tmp" <<EOF
# bollmin dashboard secret, read by systemd (EnvironmentFile=) for both services. Keep it root:bollmin 0640.
# After editing: sudo ./auto_deploy.sh restart
#
# Dashboard login: any user name and this password (at least 10 characters when the dashboard
# listens beyond loopback). $2
BOLLMIN_DASHBOARD_PASSWORD=$1
EOF
  chown root:"$APP_USER" "$tmp"
  mv "$tmp" "$WEB_ENV_FILE"
}

ensure_web_env_file() {
  # Older installs kept the dashboard password in bollmin.env, which both services read: move it
  # into dashboard.env, so that the dashboard's unit needs nothing from the bot's secrets file.
  local pattern='^[[:space:]]*(export[[:space:]]+)?BOLLMIN_DASHBOARD_PASSWORD=' line tmp
  [ ! -e "$WEB_ENV_FILE" ] || return 0
  line=$(grep -m1 -E "$pattern" "$ENV_FILE" 2>/dev/null || true)
  if [ -n "$line" ]; then
    write_web_env_file "${line#*=}" "Moved here from $ENV_FILE on $(date -u +%F)."
    tmp=$(mktemp "$CONF_DIR/.bollmin.env.XXXXXX")
    TMP_FILES+=("$tmp")
    chmod 0640 "$tmp"
    grep -v -E "$pattern" "$ENV_FILE" >"$tmp" || true
    printf '# BOLLMIN_DASHBOARD_PASSWORD moved to %s on %s (the dashboard does not read this file)\n' \
      "$WEB_ENV_FILE" "$(date -u +%F)" >>"$tmp"
    chown root:"$APP_USER" "$tmp"
    mv "$tmp" "$ENV_FILE"
    say "moved the dashboard password from $ENV_FILE to $WEB_ENV_FILE"
  else
    write_web_env_file "$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')" "Generated at install; change it freely."
    say "created $WEB_ENV_FILE (a random dashboard password)"
  fi
}

setting_names() {  # setting_names CODE_DIR: one name per line (nothing when unknown)
  [ -f "$1/config.py" ] || return 0
  (cd "$1" && "$VENV_DIR/bin/python" -E -s -c 'import config; print("\n".join(s.name for s in config.SETTINGS))' \
    2>/dev/null) || true
}

report_new_settings() {  # report_new_settings NEW_CODE OLD_NAMES_FILE
  local missing old_names=$2 line name new=()
  missing=$(cd "$1" && as_service_user "$VENV_DIR/bin/python" -E -s config.py --missing "$CONF_FILE" 2>/dev/null) ||
    return 0
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    name=${line%% *}
    # Only what this version added; names the user left out on purpose were reported before.
    if [ -s "$old_names" ] && grep -qx "$name" "$old_names"; then
      continue
    fi
    new+=("$line")
  done <<<"$missing"
  if [ "${#new[@]}" -gt 0 ]; then
    if [ -s "$old_names" ]; then
      say "settings new in this version (not in $CONF_FILE; these defaults apply — copy a line there to change it):"
    else  # no previous version to compare with (e.g. reinstalled after an uninstall)
      say "settings not set in $CONF_FILE (these defaults apply — copy a line there to change it):"
    fi
    printf '    %s\n' "${new[@]}"
  fi
}

# ---- systemd ----------------------------------------------------------------------------------

write_restart_dropin() {  # from CFG[AUTO_RESTART]
  local policy=no answer=no tmp
  if [ "${CFG[AUTO_RESTART]:-}" = True ]; then
    policy=on-failure
    answer=yes
  fi
  mkdir -p "$(dirname "$RESTART_DROPIN")"
  tmp=$(scratch bollmin-dropin)
  cat >"$tmp" <<EOF
# Written by auto_deploy.sh from AUTO_RESTART = ${CFG[AUTO_RESTART]:-?} in $CONF_FILE; do not edit.
# To change it: edit AUTO_RESTART there, then run: sudo ./auto_deploy.sh restart
[Service]
Restart=$policy
EOF
  install -m 0644 -o root -g root "$tmp" "$RESTART_DROPIN"
  say "AUTO_RESTART = ${CFG[AUTO_RESTART]:-?}: systemd restarts the bot after a crash: $answer"
}

restart_services() {
  systemctl daemon-reload
  systemctl enable --quiet "$BOT_UNIT" "$WEB_UNIT"
  # A unit that hit its start limit refuses to start until reset.
  systemctl reset-failed "$BOT_UNIT" "$WEB_UNIT" 2>/dev/null || true
  say "restarting $BOT_UNIT and $WEB_UNIT"
  if ! systemctl restart "$BOT_UNIT"; then
    journalctl -u "$BOT_UNIT" -n 30 --no-pager -o cat >&2 || true
    die "$BOT_UNIT did not start (log above; more: sudo journalctl -u bollmin)"
  fi
  systemctl restart "$WEB_UNIT" || warn "$WEB_UNIT did not start: sudo journalctl -u bollmin-dashboard"
}

dashboard_url() {
  local host=${CFG[DASHBOARD_HOST]:-127.0.0.1} port=${CFG[DASHBOARD_PORT]:-8080}
  case $host in
    0.0.0.0 | :: | "") host=$(hostname -I 2>/dev/null | awk '{print $1}'); host=${host:-127.0.0.1} ;;
  esac
  if [[ $host == *:* ]]; then
    host="[$host]"
  fi
  printf 'http://%s:%s/' "$host" "$port"
}

is_loopback() {
  case ${CFG[DASHBOARD_HOST]:-127.0.0.1} in
    localhost | ::1 | 127.*) return 0 ;;
    *) return 1 ;;
  esac
}

health_check() {
  local deadline state age url check_host code
  say "health check: waiting for the bot's heartbeat (up to ${HEALTH_TIMEOUT}s)"
  deadline=$((SECONDS + HEALTH_TIMEOUT))
  while :; do
    state=$(systemctl show -p ActiveState --value "$BOT_UNIT")
    probe "$CODE_DIR" status
    age=${CFG[heartbeat_age_s]:-}
    if [ "$state" = active ] && [ -n "$age" ] && awk -v a="$age" 'BEGIN { exit !(a >= -2 && a <= 10) }'; then
      break
    fi
    if [ "$state" = failed ] || [ "$state" = inactive ] || [ $SECONDS -ge $deadline ]; then
      journalctl -u "$BOT_UNIT" -n 30 --no-pager -o cat >&2 || true
      die "no fresh heartbeat from the bot (unit $state, heartbeat ${age:-never}${age:+ s ago}, DB ${CFG[DB]:-?})"
    fi
    sleep 1
  done
  say "bot: active, heartbeat ${age}s ago, mode ${CFG[MODE]:-}, state ${CFG[db_state]:-?}"
  deadline=$((SECONDS + MARKET_TIMEOUT))
  while [ "${CFG[db_connection]:-}" != connected ] && [ $SECONDS -lt $deadline ]; do
    sleep 2
    probe "$CODE_DIR" status
  done
  if [ "${CFG[db_connection]:-}" = connected ]; then
    say "market data: connected (last message ${CFG[last_message_age_s]:-?}s ago)"
  else
    warn "market data is not flowing yet (connection: ${CFG[db_connection]:-unknown}). No network or the exchange" \
      "is down? The bot keeps retrying by itself; watch it with: sudo journalctl -u bollmin -f"
  fi

  url=$(dashboard_url)
  check_host=${CFG[DASHBOARD_HOST]:-}
  case $check_host in 0.0.0.0 | "") check_host=127.0.0.1 ;; ::) check_host=::1 ;; esac
  if [[ $check_host == *:* ]]; then
    check_host="[$check_host]"
  fi
  code=""
  deadline=$((SECONDS + 20))
  while [ $SECONDS -lt $deadline ]; do
    code=$("$VENV_DIR/bin/python" -E -s -c '
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=3).status)
except Exception as exc:
    print(getattr(exc, "code", "") or type(exc).__name__)' "http://$check_host:${CFG[DASHBOARD_PORT]:-}/healthz")
    if [ "$code" = 200 ]; then
      break
    fi
    sleep 1
  done
  if [ "$code" = 200 ]; then
    say "dashboard: $url"
  else
    warn "the dashboard does not answer on $url ($code): sudo journalctl -u bollmin-dashboard"
  fi
  if is_loopback; then
    local port=${CFG[DASHBOARD_PORT]:-}
    say "  it listens on this server only; from your computer: ssh -N -L $port:127.0.0.1:$port USER@SERVER"
    say "  then open http://127.0.0.1:${CFG[DASHBOARD_PORT]:-}/"
  fi
  if [ "${CFG[DASHBOARD_PASSWORD]:-}" = set ]; then
    say "  login: any user name + BOLLMIN_DASHBOARD_PASSWORD from $WEB_ENV_FILE (sudo grep PASSWORD $WEB_ENV_FILE)"
  fi
}

# ---- commands ---------------------------------------------------------------------------------

cmd_install() {
  local first_config=0 old_names
  for f in bollmin.py config.py requirements.txt "$BOT_UNIT" "$WEB_UNIT"; do
    [ -f "$SRC_DIR/$f" ] || die "$SRC_DIR/$f is missing: run the auto_deploy.sh inside the bollmin folder"
  done
  say "installing from $SRC_DIR"
  ensure_user
  ensure_dirs

  # 1. The new code, staged next to the old so the switch is two renames.
  mkdir -p "$(dirname "$CODE_DIR")"
  STAGE=$(mktemp -d "$CODE_DIR.new.XXXXXX")
  # Not copied: hidden entries (.git, .venv, caches), the venv, local data/logs, tests, CI and benchmarks.
  tar -C "$SRC_DIR" --exclude='./.*' --exclude=./venv --exclude=__pycache__ --exclude='*.pyc' --exclude=./data \
    --exclude=./logs --exclude=./demo-data --exclude=./artifacts --exclude=./tests --exclude=./bench -cf - . |
    tar -C "$STAGE" --no-same-owner --no-same-permissions -xf -
  chown -R root:root "$STAGE"
  chmod -R u=rwX,go=rX "$STAGE"
  chmod 0755 "$STAGE" "$STAGE/auto_deploy.sh"

  # 2. The venv with the pinned requirements (at its final path; the code moves around it).
  ensure_venv "$STAGE/requirements.txt"

  # 3. Settings and secrets: created once, never overwritten; permissions re-asserted.
  if [ ! -e "$CONF_FILE" ]; then
    create_config "$STAGE"
    first_config=1
  fi
  [ -e "$ENV_FILE" ] || create_env_file
  ensure_web_env_file
  chown root:"$APP_USER" "$CONF_FILE" "$ENV_FILE" "$WEB_ENV_FILE"
  chmod 0640 "$CONF_FILE" "$ENV_FILE" "$WEB_ENV_FILE"
  probe "$STAGE"
  if [ "$first_config" = 0 ]; then
    old_names=$(scratch bollmin-names)
    setting_names "$CODE_DIR" >"$old_names"
    report_new_settings "$STAGE" "$old_names"
  fi

  # 4. Switch the code.
  if [ -d "$VENV_DIR" ]; then
    mv "$VENV_DIR" "$STAGE/venv"
  fi
  if [ -d "$CODE_DIR" ]; then
    mv "$CODE_DIR" "$CODE_DIR.old.$$"
  fi
  mv "$STAGE" "$CODE_DIR"
  STAGE=""
  rm -rf "$CODE_DIR.old.$$"
  "$VENV_DIR/bin/python" -m compileall -q -l "$CODE_DIR" >/dev/null || warn "could not precompile $CODE_DIR"
  say "code installed in $CODE_DIR"

  # 5. Services.
  install -m 0644 -o root -g root "$CODE_DIR/$BOT_UNIT" "$UNIT_DIR/$BOT_UNIT"
  install -m 0644 -o root -g root "$CODE_DIR/$WEB_UNIT" "$UNIT_DIR/$WEB_UNIT"
  write_restart_dropin
  restart_services
  health_check
  say "done. Later: sudo $CODE_DIR/auto_deploy.sh status (or logs -f, restart, stop); sudo journalctl -u bollmin -f"
}

require_installed() {
  if [ ! -x "$VENV_DIR/bin/python" ] || [ ! -f "$UNIT_DIR/$BOT_UNIT" ]; then
    die "bollmin is not installed here; install it with: sudo ./auto_deploy.sh"
  fi
}

cmd_restart() {
  require_installed
  ensure_dirs
  ensure_web_env_file
  probe "$CODE_DIR"
  write_restart_dropin
  restart_services
  health_check
}

cmd_stop() {
  require_installed
  systemctl stop "$BOT_UNIT" "$WEB_UNIT"
  say "stopped. They start again at boot; to keep them off: sudo systemctl disable bollmin bollmin-dashboard"
}

unit_line() {  # unit_line UNIT: one line of systemd facts
  local active sub pid restarts since
  active=$(systemctl show -p ActiveState --value "$1")
  sub=$(systemctl show -p SubState --value "$1")
  pid=$(systemctl show -p MainPID --value "$1")
  restarts=$(systemctl show -p NRestarts --value "$1")
  since=$(systemctl show -p ActiveEnterTimestamp --value "$1")
  if [ "${pid:-0}" = 0 ]; then
    pid=""
  fi
  printf '%-26s %s (%s)%s, restarts %s%s\n' "$1" "$active" "$sub" "${pid:+, pid $pid}" "${restarts:-0}" \
    "${since:+, since $since}"
}

ago() {  # ago SECONDS-or-empty
  if [ -n "$1" ]; then printf '%s s ago' "$1"; else printf 'never'; fi
}

cmd_status() {
  local rc=0 restart
  require_installed
  unit_line "$BOT_UNIT"
  unit_line "$WEB_UNIT"
  systemctl is-active --quiet "$BOT_UNIT" || rc=3
  restart=$(systemctl show -p Restart --value "$BOT_UNIT")
  if probe "$CODE_DIR" status; then
    printf 'mode %s, %s %s, state %s, connection %s, price %s\n' "${CFG[MODE]:-}" "${CFG[SYMBOL]:-}" \
      "${CFG[INTERVAL]:-}" "${CFG[db_state]:-?}" "${CFG[db_connection]:-?}" "${CFG[db_price]:-?}"
    printf 'heartbeat %s, last market data %s%s\n' "$(ago "${CFG[heartbeat_age_s]:-}")" \
      "$(ago "${CFG[last_message_age_s]:-}")" "${CFG[db_error]:+ (DB: ${CFG[db_error]:-})}"
    if [ -z "${CFG[heartbeat_age_s]:-}" ] ||
       ! awk -v a="${CFG[heartbeat_age_s]:-}" 'BEGIN { exit !(a <= 10) }'; then
      printf '  (no fresh heartbeat: the bot is not running; mode, state and connection are its last report)\n'
    fi
    printf 'AUTO_RESTART %s (systemd Restart=%s)\n' "${CFG[AUTO_RESTART]:-}" "$restart"
    printf 'secrets: API key %s, API secret %s, dashboard password %s (values never shown)\n' \
      "${CFG[API_KEY]:-}" "${CFG[API_SECRET]:-}" "${CFG[DASHBOARD_PASSWORD]:-}"
    printf 'notifications: %s\n' "${CFG[NOTIFY]:-off}"
    printf 'dashboard %s\n' "$(dashboard_url)"
    printf 'data %s, log %s\n' "${CFG[DB]:-}" "${CFG[LOG_FILE]:-}"
  else
    rc=1
  fi
  printf 'config %s, secrets %s (bot) and %s (dashboard)\n' "$CONF_FILE" "$ENV_FILE" "$WEB_ENV_FILE"
  return "$rc"
}

cmd_logs() {
  journalctl -u "$BOT_UNIT" -u "$WEB_UNIT" -n 100 --no-pager "$@"
}

cmd_uninstall() {
  local purge=0
  case ${1:-} in
    "") ;;
    --purge) purge=1 ;;
    *) die "unknown option '$1' (uninstall [--purge])" ;;
  esac
  systemctl disable --now --quiet "$BOT_UNIT" "$WEB_UNIT" 2>/dev/null || true
  rm -f "$UNIT_DIR/$BOT_UNIT" "$UNIT_DIR/$WEB_UNIT" "$RESTART_DROPIN"
  rmdir "$(dirname "$RESTART_DROPIN")" 2>/dev/null || true
  systemctl daemon-reload
  systemctl reset-failed "$BOT_UNIT" "$WEB_UNIT" 2>/dev/null || true
  rm -rf "$CODE_DIR"
  say "removed the services and $CODE_DIR"
  if [ "$purge" = 1 ]; then
    rm -rf "$CONF_DIR" "$DATA_DIR" "$LOG_DIR"
    if id -u "$APP_USER" >/dev/null 2>&1; then
      userdel "$APP_USER"
    fi
    if getent group "$APP_USER" >/dev/null; then
      groupdel "$APP_USER"
    fi
    say "purged $CONF_DIR, $DATA_DIR, $LOG_DIR and the user $APP_USER"
  else
    say "kept: settings and secrets in $CONF_DIR, data in $DATA_DIR, logs in $LOG_DIR, the user $APP_USER"
    say "a later 'sudo ./auto_deploy.sh' picks them up again; to remove them too: uninstall --purge"
  fi
}

main() {
  local cmd=${1:-install}
  if [ $# -gt 0 ]; then
    shift
  fi
  case $cmd in
    -h | --help | help) usage; exit 0 ;;
    install | status | logs | restart | stop | uninstall) ;;
    *) usage >&2; printf '\nbollmin: unknown command %s\n' "$cmd" >&2; exit 2 ;;
  esac
  if [ "$cmd" != logs ] && [ "$cmd" != uninstall ] && [ $# -gt 0 ]; then
    die "'$cmd' takes no arguments"
  fi
  need_root "$cmd"
  case $cmd in
    install) cmd_install ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    restart) cmd_restart ;;
    stop) cmd_stop ;;
    uninstall) cmd_uninstall "$@" ;;
  esac
}

main "$@"
