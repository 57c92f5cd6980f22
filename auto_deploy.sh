#!/usr/bin/env bash
# Install or update bollmin as systemd services on Ubuntu 22.04/24.04 or Debian 12: the bot, its
# dashboard, and optionally more bots on other symbols of the same account ("instances").
#
# Usage: sudo ./auto_deploy.sh [COMMAND] [SYMBOL]
#
#   (none), install     install or update from this folder, restart, health check; updates every
#                       instance too (running bots restarted on the new code, configs never touched)
#   status [SYMBOL]     services, heartbeat, market data, mode (secrets masked), and the instances
#   list                every instance: service, mode, strategy state, position, heartbeat age
#   logs [SYMBOL] [ARGS...]  last 100 log lines of both services, or of that instance (ARGS go to
#                       journalctl, e.g. -f)
#   restart [SYMBOL]    re-read AUTO_RESTART from the config, restart both services (or that
#                       instance), health check
#   stop [SYMBOL]       stop both services, or that instance (they start again at boot)
#   add SYMBOL          one more bot, trading SYMBOL (e.g. ETHUSDT) on the same account: settings
#                       /etc/bollmin/SYMBOL.py from the defaults (paper trading), DB
#                       /var/lib/bollmin/SYMBOL.db, log /var/log/bollmin/SYMBOL.log, service
#                       bollmin@SYMBOL.service; the exchange must list SYMBOL; started, health check
#   remove SYMBOL [--purge]  stop and remove that instance; its settings, DB and log are kept
#                       unless --purge (--force: even while it holds a live position)
#   uninstall [--purge] remove the services (every instance's too) and /opt/bollmin; config,
#                       secrets, data and logs are kept unless --purge (which also removes the
#                       bollmin user)
#   -h, --help          this help (needs no root, changes nothing)
#
# Without SYMBOL a command acts on the default instance as it always did: bollmin.service with
# /etc/bollmin/config.py (and the dashboard). SYMBOL names an instance made with add (or the default
# instance's own symbol). Symbols are upper-case letters and digits, like the SYMBOL setting.
#
# Layout: code /opt/bollmin (venv in /opt/bollmin/venv), settings /etc/bollmin/config.py
# (created once, never overwritten), secrets /etc/bollmin/bollmin.env (the bot's: exchange keys,
# notification URLs) and /etc/bollmin/dashboard.env (the dashboard password), root:bollmin 0640,
# data /var/lib/bollmin, log file /var/log/bollmin (and journald), services bollmin.service
# and bollmin-dashboard.service running as the system user bollmin (the dashboard never gets the
# bot's secrets file). An instance adds /etc/bollmin/SYMBOL.py, /var/lib/bollmin/SYMBOL.db,
# /var/log/bollmin/SYMBOL.log and bollmin@SYMBOL.service (same user, same hardening); the code,
# the venv, the secrets (one exchange account) and the dashboard are shared. Running it again is
# an update: config, secrets and data are kept.
# Details: README.md (服务器部署)
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
readonly TEMPLATE_UNIT=bollmin@.service
readonly RESTART_DROPIN=$UNIT_DIR/$BOT_UNIT.d/10-restart.conf
# An instance's name is its symbol, spelled like the SYMBOL setting (config.py: _symbol).
readonly SYMBOL_RE='^[A-Z0-9]{2,20}$'
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
    status | logs | list) ;;  # read-only: fine while a deploy runs
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

# ---- instances ---------------------------------------------------------------------------------
# An instance is one bot. "" names the default one (bollmin.service, /etc/bollmin/config.py, any
# symbol); an added one is named by its symbol: bollmin@SYMBOL.service, /etc/bollmin/SYMBOL.py.
# An added instance exists while its AUTO_RESTART drop-in does (add writes it, remove deletes it).

unit_of() { if [ -n "$1" ]; then printf 'bollmin@%s.service' "$1"; else printf '%s' "$BOT_UNIT"; fi; }
conf_of() { if [ -n "$1" ]; then printf '%s/%s.py' "$CONF_DIR" "$1"; else printf '%s' "$CONF_FILE"; fi; }
dropin_of() { printf '%s/%s.d/10-restart.conf' "$UNIT_DIR" "$(unit_of "$1")"; }

instances() {  # the added instances, one symbol per line
  local f name
  for f in "$UNIT_DIR"/bollmin@*.service.d/10-restart.conf; do
    [ -e "$f" ] || continue
    name=${f#"$UNIT_DIR/bollmin@"}
    name=${name%.service.d/10-restart.conf}
    if [[ $name =~ $SYMBOL_RE ]]; then
      printf '%s\n' "$name"
    fi
  done
}

is_instance() { [ -n "$1" ] && [ -e "$(dropin_of "$1")" ]; }

is_running() {  # is_running UNIT: active, or on its way there (a restart after a crash included)
  case $(systemctl show -p ActiveState --value "$1") in
    active | activating | reloading) return 0 ;;
    *) return 1 ;;
  esac
}

check_symbol_name() {  # check_symbol_name WORD: dies unless WORD is spelled like a contract name
  local hint=""
  if [[ $1 =~ $SYMBOL_RE ]]; then
    return 0
  fi
  if [[ ${1^^} =~ $SYMBOL_RE ]]; then
    hint=" (did you mean ${1^^}?)"
  fi
  die "'$1' is not a symbol: 2 to 20 upper-case letters and digits, such as ETHUSDT$hint"
}

TARGET=""  # the instance a command acts on ("" = the default one), set by resolve

resolve() {  # resolve [SYMBOL]: sets TARGET; the default instance's own symbol names it too
  TARGET=""
  if [ -z "${1:-}" ] || is_instance "$1"; then
    TARGET=${1:-}
    return 0
  fi
  if probe_quiet "$CODE_DIR" "$CONF_FILE" && [ "${CFG[SYMBOL]:-}" = "$1" ]; then
    return 0
  fi
  die "no instance $1 here (sudo ./auto_deploy.sh list shows them; to add one: sudo ./auto_deploy.sh add $1)"
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
# WHAT: config (the settings), status (also the bot's last report from its DB, read-only),
# exchange (the bot's own check-config --exchange: is SYMBOL listed? exit 2 when it is not), or
# instance SYMBOL LOG_DIR (prints a new instance's settings file: the defaults, its symbol and
# paths, and this account's exchange from the probed file).
read -r -d '' PROBE_PY <<'PY' || true
import pathlib, re, sqlite3, sys, time
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
if what == "exchange":
    import os
    import bollmin
    os.environ.update(env)
    sys.exit(bollmin.main(["check-config", "--exchange", "--json", "--config", conf_file]))
if what == "instance":
    symbol, log_dir = sys.argv[6:8]
    values = {"SYMBOL": symbol, "DB_PATH": f"{data_dir}/{symbol}.db", "LOG_FILE": f"{log_dir}/{symbol}.log"}
    # One account, one exchange: the keys in the env file work where the probed file trades.
    if cfg.TESTNET:
        values["TESTNET"] = True
    rest, ws = (config.TESTNET_REST, config.TESTNET_WS) if cfg.TESTNET else (config.PRODUCTION_REST, config.PRODUCTION_WS)
    if cfg.REST_BASE_URL != rest:
        values["REST_BASE_URL"] = cfg.REST_BASE_URL
    if cfg.WS_BASE_URL != ws:
        values["WS_BASE_URL"] = cfg.WS_BASE_URL
    text = config.render_default_file()
    for name, value in values.items():
        line = f"{name} = {value!r}"
        text, found = re.subn(rf"^{name} = .*$", lambda _match, line=line: line, text, count=1, flags=re.M)
        if found != 1:
            sys.exit(f"the default settings file has no {name} line")
    sys.stdout.write(text)
    print(" ".join(f"{k} = {v!r}" for k, v in values.items() if k not in ("SYMBOL", "DB_PATH", "LOG_FILE")),
          file=sys.stderr)
    sys.exit(0)
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
    try:  # the ledger's signed quantity: > 0 long, < 0 short
        qty, entry = float(rows.get("position_qty") or 0), float(rows.get("entry_price") or 0)
        out["position"] = "flat" if not qty else f"{'long' if qty > 0 else 'short'} {abs(qty):.10g} @ {entry:.10g}"
    except (TypeError, ValueError):
        out["position"] = ""
    if "db_error" in rows:
        out["position"] = ""
for key, value in out.items():
    print(f"{key}={' '.join(str(value).split())}")
PY

declare -A CFG=()
PROBE_ERROR=""  # the one-line reason of the last failed probe

_probe() {  # _probe LOUD CODE_DIR CONF [WHAT]: fills CFG; on a bad config sets PROBE_ERROR and fails
  local loud=$1 code=$2 conf=$3 what=${4:-config} out err line key value
  out=$(scratch bollmin-probe)
  err=$(scratch bollmin-probe-err)
  if ! (cd "$code" && as_service_user "$VENV_DIR/bin/python" -E -s -c "$PROBE_PY" \
          "$conf" "$ENV_FILE" "$WEB_ENV_FILE" "$DATA_DIR" "$what") >"$out" 2>"$err"; then
    line=$(grep -v '^[[:space:]]*$' "$err" | tail -n 1 || true)
    PROBE_ERROR=${line:-the settings could not be read}
    if [ "$loud" = 1 ]; then
      printf 'bollmin: ERROR: configuration: %s\n' "$PROBE_ERROR" >&2
      printf 'bollmin: fix %s (or %s, %s) and run this again; the running services were not changed\n' \
        "$conf" "$ENV_FILE" "$WEB_ENV_FILE" >&2
    fi
    rm -f "$out" "$err"
    return 1
  fi
  CFG=()
  while IFS='=' read -r key value; do
    if [ -n "$key" ]; then
      CFG[$key]=$value
    fi
  done <"$out"
  rm -f "$out" "$err"
}

probe() { _probe 1 "$@"; }        # probe CODE_DIR CONF [WHAT]: a bad config is one line on stderr
probe_quiet() { _probe 0 "$@"; }  # the same, silent (PROBE_ERROR says why)

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

report_new_settings() {  # report_new_settings NEW_CODE OLD_NAMES_FILE CONF
  local missing old_names=$2 conf=$3 line name new=()
  missing=$(cd "$1" && as_service_user "$VENV_DIR/bin/python" -E -s config.py --missing "$conf" 2>/dev/null) ||
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
      say "settings new in this version (not in $conf; these defaults apply — copy a line there to change it):"
    else  # no previous version to compare with (e.g. reinstalled after an uninstall)
      say "settings not set in $conf (these defaults apply — copy a line there to change it):"
    fi
    printf '    %s\n' "${new[@]}"
  fi
}

# ---- systemd ----------------------------------------------------------------------------------

write_restart_dropin() {  # write_restart_dropin NAME AUTO_RESTART: the instance's Restart= (its marker too)
  local name=$1 value=$2 policy=no answer=no tmp dropin
  if [ "$value" = True ]; then
    policy=on-failure
    answer=yes
  fi
  dropin=$(dropin_of "$name")
  mkdir -p "$(dirname "$dropin")"
  tmp=$(scratch bollmin-dropin)
  cat >"$tmp" <<EOF
# Written by auto_deploy.sh from AUTO_RESTART = ${value:-?} in $(conf_of "$name"); do not edit.
# To change it: edit AUTO_RESTART there, then run: sudo ./auto_deploy.sh restart${name:+ $name}
[Service]
Restart=$policy
EOF
  install -m 0644 -o root -g root "$tmp" "$dropin"
  say "${name:+$name: }AUTO_RESTART = ${value:-?}: systemd restarts the bot after a crash: $answer"
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

start_instance() {  # start_instance NAME: enable and (re)start an added instance's unit
  local unit
  unit=$(unit_of "$1")
  systemctl enable --quiet "$unit" || return 1
  systemctl reset-failed "$unit" 2>/dev/null || true
  say "restarting $unit"
  if ! systemctl restart "$unit"; then
    journalctl -u "$unit" -n 30 --no-pager -o cat >&2 || true
    printf 'bollmin: ERROR: %s did not start (log above; more: sudo journalctl -u %s)\n' "$unit" "${unit%.service}" >&2
    return 1
  fi
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

bot_health() {  # bot_health NAME: 0 once the bot is active with a fresh heartbeat (no market data: a warning)
  local name=$1 unit conf deadline state age
  unit=$(unit_of "$name")
  conf=$(conf_of "$name")
  say "${name:+$name: }health check: waiting for the bot's heartbeat (up to ${HEALTH_TIMEOUT}s)"
  deadline=$((SECONDS + HEALTH_TIMEOUT))
  while :; do
    state=$(systemctl show -p ActiveState --value "$unit")
    probe "$CODE_DIR" "$conf" status || return 1
    age=${CFG[heartbeat_age_s]:-}
    if [ "$state" = active ] && [ -n "$age" ] && awk -v a="$age" 'BEGIN { exit !(a >= -2 && a <= 10) }'; then
      break
    fi
    if [ "$state" = failed ] || [ "$state" = inactive ] || [ $SECONDS -ge $deadline ]; then
      journalctl -u "$unit" -n 30 --no-pager -o cat >&2 || true
      printf 'bollmin: ERROR: no fresh heartbeat from the bot%s (unit %s, heartbeat %s, DB %s)\n' \
        "${name:+ $name}" "$state" "${age:-never}${age:+ s ago}" "${CFG[DB]:-?}" >&2
      return 1
    fi
    sleep 1
  done
  say "${name:-bot}: active, heartbeat ${age}s ago, mode ${CFG[MODE]:-}, state ${CFG[db_state]:-?}"
  deadline=$((SECONDS + MARKET_TIMEOUT))
  while [ "${CFG[db_connection]:-}" != connected ] && [ $SECONDS -lt $deadline ]; do
    sleep 2
    probe "$CODE_DIR" "$conf" status || return 1
  done
  if [ "${CFG[db_connection]:-}" = connected ]; then
    say "${name:+$name }market data: connected (last message ${CFG[last_message_age_s]:-?}s ago)"
  else
    warn "${name:+$name: }market data is not flowing yet (connection: ${CFG[db_connection]:-unknown}). No network" \
      "or the exchange is down? The bot keeps retrying by itself; watch it with: sudo journalctl -u ${unit%.service} -f"
  fi
}

health_check() {  # the default bot (exits on failure), then the dashboard
  local url check_host code
  bot_health "" || exit 1

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

# ---- instances: their settings and the rules between them --------------------------------------

COPIED_EXCHANGE=""  # the exchange settings a new instance's file took from config.py

create_instance_config() {  # create_instance_config SYMBOL FILE: the defaults with its symbol and paths
  local name=$1 file=$2 body err copied
  body=$(scratch bollmin-instance)
  err=$(scratch bollmin-instance-err)
  if ! (cd "$CODE_DIR" && as_service_user "$VENV_DIR/bin/python" -E -s -c "$PROBE_PY" \
          "$CONF_FILE" "$ENV_FILE" "$WEB_ENV_FILE" "$DATA_DIR" instance "$name" "$LOG_DIR") >"$body" 2>"$err"; then
    die "could not make the settings of $name: $(grep -v '^[[:space:]]*$' "$err" | tail -n 1)"
  fi
  copied=$(tail -n 1 "$err")
  {
    printf '# %s — the %s instance (%s), created by auto_deploy.sh add on %s;\n' \
      "$(conf_of "$name")" "$name" "$(unit_of "$name")" "$(date -u +%F)"
    printf '# updates never overwrite it. After editing: sudo %s/auto_deploy.sh restart %s\n' "$CODE_DIR" "$name"
    printf '# Shared with every instance: the exchange keys in %s (one account); so TESTNET,\n' "$ENV_FILE"
    printf '# REST_BASE_URL and WS_BASE_URL start as in %s. DASHBOARD_* are not used here: the\n' "$CONF_FILE"
    printf '# one dashboard reads %s and shows every instance.\n#\n' "$CONF_FILE"
    cat "$body"
  } >"$file"
  COPIED_EXCHANGE=$copied
}

instance_rules() {  # instance_rules SYMBOL: after a probe of its settings, what an added instance must keep
  local name=$1 conf
  conf=$(conf_of "$name")
  if [ "${CFG[SYMBOL]:-}" != "$name" ]; then
    die "$conf: SYMBOL = '${CFG[SYMBOL]:-}', but this is the $name instance ($(unit_of "$name")): set SYMBOL = '$name'" \
      "there (another symbol is another instance: sudo ./auto_deploy.sh add SYMBOL)"
  fi
  if [ "$(dirname "${CFG[DB]:-}")" != "$DATA_DIR" ]; then
    die "$conf: DB_PATH must be a file in $DATA_DIR (the only place the service may write, and where the dashboard" \
      "finds every instance), e.g. DB_PATH = '$DATA_DIR/$name.db'"
  fi
}

check_distinct() {  # check_distinct CODE_DIR [SYMBOL CONF]: no two bots share a symbol, a DB or a log file
  local code=$1 cand=${2:-} cand_conf=${3:-} name conf key value label
  local -a names=("")
  local -A owner=()
  mapfile -t -O 1 names < <(instances)
  if [ -n "$cand" ] && ! is_instance "$cand"; then
    names+=("$cand")
  fi
  for name in "${names[@]}"; do
    conf=$(conf_of "$name")
    label="$(unit_of "$name") ($conf)"
    if [ -n "$cand" ] && [ "$name" = "$cand" ]; then
      conf=$cand_conf
    fi
    probe_quiet "$code" "$conf" || continue  # a bad settings file is reported where it is used
    for key in SYMBOL DB LOG_FILE; do
      value=${CFG[$key]:-}
      if [ -n "${owner[$key=$value]:-}" ]; then
        case $key in
          SYMBOL) die "$label and ${owner[$key=$value]} both trade $value: the account holds one position per" \
                    "symbol, and two bots would fight over it" ;;
          *) die "$label and ${owner[$key=$value]} both use $value ($key): every instance needs its own" ;;
        esac
      fi
      owner[$key=$value]=$label
    done
  done
}

exchange_check() {  # exchange_check SYMBOL CONF: listed, or the exchange could not be asked (a warning)
  local name=$1 conf=$2 err rc=0 line
  err=$(scratch bollmin-exchange)
  (cd "$CODE_DIR" && as_service_user timeout 120 "$VENV_DIR/bin/python" -E -s -c "$PROBE_PY" \
     "$conf" "$ENV_FILE" "$WEB_ENV_FILE" "$DATA_DIR" exchange) >/dev/null 2>"$err" || rc=$?
  line=$(grep -v '^[[:space:]]*$' "$err" | tail -n 1 || true)
  line=${line#bollmin: }
  case $rc in
    0)
      if [ -n "$line" ]; then
        warn "${line#warning: }; adding it anyway (the bot checks again when it starts, and stops if it is not listed)"
      else
        say "the exchange lists $name"
      fi
      ;;
    124) warn "the exchange did not answer within 120 s: $name not confirmed; adding it anyway" ;;
    *)
      printf 'bollmin: ERROR: %s; nothing was installed\n' "${line:-the exchange check of $name failed (exit $rc)}" >&2
      return 1
      ;;
  esac
}

purge_instance_files() {  # purge_instance_files SYMBOL: its settings, DB and log (never another bot's files)
  local name=$1 conf db log other
  conf=$(conf_of "$name")
  db=$DATA_DIR/$name.db
  log=$LOG_DIR/$name.log
  if [ -f "$conf" ] && probe_quiet "$CODE_DIR" "$conf"; then
    if [ "$(dirname "${CFG[DB]:-}")" = "$DATA_DIR" ]; then
      db=${CFG[DB]}
    fi
    if [ "$(dirname "${CFG[LOG_FILE]:-}")" = "$LOG_DIR" ]; then
      log=${CFG[LOG_FILE]}
    fi
  fi
  for other in "" $(instances); do
    probe_quiet "$CODE_DIR" "$(conf_of "$other")" || continue
    if [ "${CFG[DB]:-}" = "$db" ] || [ "${CFG[LOG_FILE]:-}" = "$log" ]; then
      die "not purging $name: $db or $log belongs to $(unit_of "$other") too; delete what is $name's by hand"
    fi
  done
  rm -f -- "$conf" "$db" "$db-wal" "$db-shm" "$db-journal" "$log" "$log".[0-9]*
  say "purged $name: $conf, $db, $log"
}

kept_instances() {  # settings files of removed instances, one symbol per line
  local f name
  for f in "$CONF_DIR"/*.py; do
    name=${f##*/}
    name=${name%.py}
    if [[ $name =~ $SYMBOL_RE ]] && ! is_instance "$name"; then
      printf '%s\n' "$name"
    fi
  done
}

# ---- commands ---------------------------------------------------------------------------------

cmd_install() {
  local first_config=0 old_names default_auto name conf
  local -a added=() running=() stopped=() failed=()
  local -A auto=()
  for f in bollmin.py config.py requirements.txt "$BOT_UNIT" "$WEB_UNIT" "$TEMPLATE_UNIT"; do
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

  # 3. Settings and secrets: created once, never overwritten; permissions re-asserted. Every
  #    instance's settings must pass the new version before anything changes.
  if [ ! -e "$CONF_FILE" ]; then
    create_config "$STAGE"
    first_config=1
  fi
  [ -e "$ENV_FILE" ] || create_env_file
  ensure_web_env_file
  chown root:"$APP_USER" "$CONF_FILE" "$ENV_FILE" "$WEB_ENV_FILE"
  chmod 0640 "$CONF_FILE" "$ENV_FILE" "$WEB_ENV_FILE"
  old_names=$(scratch bollmin-names)
  setting_names "$CODE_DIR" >"$old_names"
  probe "$STAGE" "$CONF_FILE"
  default_auto=${CFG[AUTO_RESTART]:-}
  if [ "$first_config" = 0 ]; then
    report_new_settings "$STAGE" "$old_names" "$CONF_FILE"
  fi
  mapfile -t added < <(instances)
  for name in "${added[@]}"; do
    conf=$(conf_of "$name")
    chown root:"$APP_USER" "$conf" 2>/dev/null || true
    chmod 0640 "$conf" 2>/dev/null || true
    probe "$STAGE" "$conf"
    instance_rules "$name"
    auto[$name]=${CFG[AUTO_RESTART]:-}
    report_new_settings "$STAGE" "$old_names" "$conf"
    if is_running "$(unit_of "$name")"; then
      running+=("$name")
    else
      stopped+=("$name")
    fi
  done
  check_distinct "$STAGE"
  probe "$STAGE" "$CONF_FILE"  # CFG is the default instance's again (the dashboard's address)

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

  # 5. Services: the running bots go onto the new code at once (the old files are gone).
  install -m 0644 -o root -g root "$CODE_DIR/$BOT_UNIT" "$UNIT_DIR/$BOT_UNIT"
  install -m 0644 -o root -g root "$CODE_DIR/$WEB_UNIT" "$UNIT_DIR/$WEB_UNIT"
  install -m 0644 -o root -g root "$CODE_DIR/$TEMPLATE_UNIT" "$UNIT_DIR/$TEMPLATE_UNIT"
  write_restart_dropin "" "$default_auto"
  for name in "${added[@]}"; do
    write_restart_dropin "$name" "${auto[$name]}"
  done
  restart_services
  for name in "${running[@]}"; do
    start_instance "$name" || failed+=("$name")
  done
  health_check
  for name in "${running[@]}"; do
    if [[ " ${failed[*]} " != *" $name "* ]]; then
      bot_health "$name" || failed+=("$name")
    fi
  done
  for name in "${stopped[@]}"; do
    say "$name: $(unit_of "$name") was not running, left so; it runs this version once started" \
      "(sudo ./auto_deploy.sh restart $name)"
  done
  if [ "${#failed[@]}" -gt 0 ]; then
    die "installed, but not healthy: ${failed[*]} (sudo ./auto_deploy.sh status SYMBOL, logs SYMBOL)"
  fi
  say "done. Later: sudo $CODE_DIR/auto_deploy.sh status (or list, logs -f, restart, stop, add SYMBOL);" \
    "sudo journalctl -u bollmin -f"
}

require_installed() {
  if [ ! -x "$VENV_DIR/bin/python" ] || [ ! -f "$UNIT_DIR/$BOT_UNIT" ]; then
    die "bollmin is not installed here; install it with: sudo ./auto_deploy.sh"
  fi
}

cmd_add() {  # cmd_add SYMBOL
  local name=$1 conf unit new_conf="" target
  require_installed
  [ -f "$UNIT_DIR/$TEMPLATE_UNIT" ] ||
    die "the installed bollmin predates instances: update it first (sudo ./auto_deploy.sh), then add $name"
  conf=$(conf_of "$name")
  unit=$(unit_of "$name")
  if is_instance "$name"; then
    say "$name is an instance already ($unit, $conf): nothing to do (sudo ./auto_deploy.sh restart $name restarts it)"
    return 0
  fi
  ensure_dirs
  ensure_web_env_file
  probe "$CODE_DIR" "$CONF_FILE"  # the default instance: its symbol, and the account's exchange
  if [ "${CFG[SYMBOL]:-}" = "$name" ]; then
    die "$name is the default instance's symbol ($BOT_UNIT, $CONF_FILE): the account holds one position per" \
      "symbol, and two bots would fight over it"
  fi
  if [ -e "$conf" ]; then
    say "using $conf as it is (kept from an earlier $name instance)"
    target=$conf
  else
    new_conf=$(mktemp --suffix=.py "$CONF_DIR/.$name.XXXXXX")
    TMP_FILES+=("$new_conf")
    create_instance_config "$name" "$new_conf"
    target=$new_conf
  fi
  chown root:"$APP_USER" "$target"
  chmod 0640 "$target"
  check_distinct "$CODE_DIR" "$name" "$target"
  probe "$CODE_DIR" "$target"
  instance_rules "$name"
  exchange_check "$name" "$target" || exit 1
  if [ -n "$new_conf" ]; then
    mv "$new_conf" "$conf"
    say "created $conf (${CFG[MODE]:-?}; edit it, then: sudo ./auto_deploy.sh restart $name)"
    if [ -n "$COPIED_EXCHANGE" ]; then
      say "  with the account's exchange, as in $CONF_FILE: $COPIED_EXCHANGE"
    fi
  fi
  write_restart_dropin "$name" "${CFG[AUTO_RESTART]:-}"
  systemctl daemon-reload
  if ! start_instance "$name" || ! bot_health "$name"; then
    die "$name is installed but not healthy (log above); fix it and: sudo ./auto_deploy.sh restart $name," \
      "or take it away: sudo ./auto_deploy.sh remove $name"
  fi
  say "added $name: $unit, settings $conf, data ${CFG[DB]:-?}, log ${CFG[LOG_FILE]:-?}"
  say "  shared with every instance: the code and venv in $CODE_DIR, the exchange keys in $ENV_FILE (one account)," \
    "the dashboard"
  say "  later: sudo ./auto_deploy.sh list; status $name; logs $name -f; restart $name; remove $name"
}

cmd_remove() {  # cmd_remove SYMBOL PURGE FORCE (0/1 each)
  local name=$1 purge=$2 force=$3 unit conf dropin
  require_installed
  unit=$(unit_of "$name")
  conf=$(conf_of "$name")
  dropin=$(dropin_of "$name")
  if ! is_instance "$name"; then
    if probe_quiet "$CODE_DIR" "$CONF_FILE" && [ "${CFG[SYMBOL]:-}" = "$name" ]; then
      die "$name is the default instance ($BOT_UNIT, $CONF_FILE): it goes only with uninstall"
    fi
    if [ -e "$conf" ] || [ -e "$DATA_DIR/$name.db" ] || [ -e "$LOG_DIR/$name.log" ]; then
      if [ "$purge" = 1 ]; then
        purge_instance_files "$name"
        return 0
      fi
      die "$name is not an instance (removed before); its files are kept: remove $name --purge deletes them"
    fi
    die "no instance $name here (sudo ./auto_deploy.sh list shows them)"
  fi
  # Without its bot an open position on the exchange has nobody to close it (no stop-loss).
  if probe_quiet "$CODE_DIR" "$conf" status && [ -n "${CFG[db_mode]:-}" ] && [ "${CFG[db_mode]}" != PAPER ] &&
     [ -n "${CFG[position]:-}" ] && [ "${CFG[position]}" != flat ]; then
    if [ "$force" != 1 ]; then
      die "$name holds an open ${CFG[db_mode]} position (${CFG[position]}) that nobody would manage without its bot:" \
        "close it first (dashboard: close now), or only stop the bot (stop $name); to remove it anyway: remove $name --force"
    fi
    warn "$name holds an open ${CFG[db_mode]} position (${CFG[position]}): removed anyway (--force); it stays open"
  fi
  systemctl disable --now --quiet "$unit" 2>/dev/null || true
  rm -f "$dropin"
  rmdir "$(dirname "$dropin")" 2>/dev/null || true  # kept when it holds a drop-in of the user's own
  systemctl daemon-reload
  systemctl reset-failed "$unit" 2>/dev/null || true
  say "removed $unit"
  if [ "$purge" = 1 ]; then
    purge_instance_files "$name"
  else
    say "kept: its settings $conf, data and log (in $DATA_DIR, $LOG_DIR); sudo ./auto_deploy.sh add $name uses them" \
      "again, remove $name --purge deletes them"
  fi
}

cmd_restart() {  # cmd_restart [SYMBOL]
  require_installed
  resolve "${1:-}"
  ensure_dirs
  ensure_web_env_file
  if [ -z "$TARGET" ]; then
    probe "$CODE_DIR" "$CONF_FILE"
    write_restart_dropin "" "${CFG[AUTO_RESTART]:-}"
    restart_services
    health_check
    return 0
  fi
  check_distinct "$CODE_DIR"
  probe "$CODE_DIR" "$(conf_of "$TARGET")"
  instance_rules "$TARGET"
  write_restart_dropin "$TARGET" "${CFG[AUTO_RESTART]:-}"
  systemctl daemon-reload
  start_instance "$TARGET" || exit 1
  bot_health "$TARGET" || exit 1
}

cmd_stop() {  # cmd_stop [SYMBOL]
  local name others=()
  require_installed
  resolve "${1:-}"
  if [ -n "$TARGET" ]; then
    systemctl stop "$(unit_of "$TARGET")"
    say "stopped $(unit_of "$TARGET"). It starts again at boot; to remove it: sudo ./auto_deploy.sh remove $TARGET" \
      "(keeps its data)"
    return 0
  fi
  systemctl stop "$BOT_UNIT" "$WEB_UNIT"
  say "stopped. They start again at boot; to keep them off: sudo systemctl disable bollmin bollmin-dashboard"
  for name in $(instances); do
    if is_running "$(unit_of "$name")"; then
      others+=("$name")
    fi
  done
  if [ "${#others[@]}" -gt 0 ]; then
    say "still running: ${others[*]} (sudo ./auto_deploy.sh stop SYMBOL stops one)"
  fi
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

cmd_status() {  # cmd_status [SYMBOL]
  local rc=0 restart name unit conf url="" added=()
  require_installed
  resolve "${1:-}"
  name=$TARGET
  unit=$(unit_of "$name")
  conf=$(conf_of "$name")
  if [ -n "$name" ] && probe_quiet "$CODE_DIR" "$CONF_FILE"; then
    url=$(dashboard_url)  # the one dashboard reads the default instance's settings
  fi
  unit_line "$unit"
  unit_line "$WEB_UNIT"
  systemctl is-active --quiet "$unit" || rc=3
  restart=$(systemctl show -p Restart --value "$unit")
  if probe "$CODE_DIR" "$conf" status; then
    printf 'mode %s, %s %s, state %s, position %s, connection %s, price %s\n' "${CFG[MODE]:-}" "${CFG[SYMBOL]:-}" \
      "${CFG[INTERVAL]:-}" "${CFG[db_state]:-?}" "${CFG[position]:-?}" "${CFG[db_connection]:-?}" "${CFG[db_price]:-?}"
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
    printf 'dashboard %s\n' "${url:-$(dashboard_url)}"
    printf 'data %s, log %s\n' "${CFG[DB]:-}" "${CFG[LOG_FILE]:-}"
  else
    rc=1
  fi
  printf 'config %s, secrets %s (bot) and %s (dashboard)\n' "$conf" "$ENV_FILE" "$WEB_ENV_FILE"
  if [ -z "$name" ]; then
    mapfile -t added < <(instances)
    if [ "${#added[@]}" -gt 0 ]; then
      printf 'more instances (sudo ./auto_deploy.sh list; status SYMBOL):\n'
      for name in "${added[@]}"; do
        unit_line "$(unit_of "$name")"
      done
    fi
  else
    printf 'shared with every instance: the code %s, the secrets (one exchange account), the dashboard\n' "$CODE_DIR"
  fi
  return "$rc"
}

list_row() { printf '%-12s %-26s %-11s %-8s %-15s %-26s %s\n' "$@"; }

cmd_list() {  # every instance, one line each, from its settings and its DB (read-only)
  local name unit conf active mode added=() kept=()
  require_installed
  mapfile -t added < <(instances)
  list_row SYMBOL SERVICE ACTIVE MODE STATE POSITION HEARTBEAT
  for name in "" "${added[@]}"; do
    unit=$(unit_of "$name")
    conf=$(conf_of "$name")
    active=$(systemctl show -p ActiveState --value "$unit")
    if ! probe_quiet "$CODE_DIR" "$conf" status; then
      list_row "${name:-?}" "$unit" "$active" - - - -
      printf '  %s: %s\n' "$conf" "$PROBE_ERROR"
      continue
    fi
    mode=${CFG[db_mode]:-${CFG[MODE]:-?}}  # what the bot runs (or last ran) as
    list_row "${CFG[SYMBOL]:-?}" "$unit" "$active" "$mode" "${CFG[db_state]:--}" "${CFG[position]:--}" \
      "$(ago "${CFG[heartbeat_age_s]:-}")"
    if [ -n "${CFG[db_mode]:-}" ] && [ "${CFG[db_mode]}" != "${CFG[MODE]:-}" ]; then
      printf '  %s says %s: from its next start (sudo ./auto_deploy.sh restart%s)\n' "$conf" "${CFG[MODE]:-}" \
        "${name:+ $name}"
    fi
  done
  mapfile -t kept < <(kept_instances)
  if [ "${#kept[@]}" -gt 0 ]; then
    printf 'removed, their settings and data kept: %s (add SYMBOL uses them again, remove SYMBOL --purge deletes them)\n' \
      "${kept[*]}"
  fi
}

cmd_logs() {  # cmd_logs [SYMBOL] [ARGS...]
  local units=(-u "$BOT_UNIT" -u "$WEB_UNIT")
  if [ $# -gt 0 ] && [[ $1 =~ $SYMBOL_RE ]]; then
    resolve "$1"
    shift
    if [ -n "$TARGET" ]; then
      units=(-u "$(unit_of "$TARGET")")
    fi
  fi
  journalctl "${units[@]}" -n 100 --no-pager "$@"
}

cmd_uninstall() {
  local purge=0 name added=() units=("$BOT_UNIT" "$WEB_UNIT")
  case ${1:-} in
    "") ;;
    --purge) purge=1 ;;
    *) die "unknown option '$1' (uninstall [--purge])" ;;
  esac
  mapfile -t added < <(instances)
  for name in "${added[@]}"; do
    units+=("$(unit_of "$name")")
  done
  systemctl disable --now --quiet "${units[@]}" 2>/dev/null || true
  for name in "${added[@]}"; do
    rm -f "$(dropin_of "$name")"
    rmdir "$(dirname "$(dropin_of "$name")")" 2>/dev/null || true
  done
  rm -f "$UNIT_DIR/$BOT_UNIT" "$UNIT_DIR/$WEB_UNIT" "$UNIT_DIR/$TEMPLATE_UNIT" "$RESTART_DROPIN"
  rmdir "$(dirname "$RESTART_DROPIN")" 2>/dev/null || true
  systemctl daemon-reload
  systemctl reset-failed "${units[@]}" 2>/dev/null || true
  rm -rf "$CODE_DIR"
  say "removed the services${added[*]:+ (instances included: ${added[*]})} and $CODE_DIR"
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
    say "a later 'sudo ./auto_deploy.sh' picks them up again${added[*]:+ (then add ${added[*]} again)};" \
      "to remove them too: uninstall --purge"
  fi
}

main() {
  local cmd=${1:-install} symbol="" purge=0 force=0 arg
  if [ $# -gt 0 ]; then
    shift
  fi
  case $cmd in
    -h | --help | help) usage; exit 0 ;;
    install | status | list | logs | restart | stop | add | remove | uninstall) ;;
    *) usage >&2; printf '\nbollmin: unknown command %s\n' "$cmd" >&2; exit 2 ;;
  esac
  case $cmd in
    install | list)
      [ $# -eq 0 ] || die "'$cmd' takes no arguments" ;;
    status | restart | stop)
      [ $# -le 1 ] || die "'$cmd' takes at most a symbol (e.g. $cmd ETHUSDT)"
      if [ $# -eq 1 ]; then
        check_symbol_name "$1"
        symbol=$1
      fi
      ;;
    add)
      [ $# -eq 1 ] || die "usage: add SYMBOL (e.g. add ETHUSDT)"
      check_symbol_name "$1"
      symbol=$1
      ;;
    remove)
      for arg in "$@"; do
        case $arg in
          --purge) purge=1 ;;
          --force) force=1 ;;
          *)
            [ -z "$symbol" ] || die "usage: remove SYMBOL [--purge] [--force]"
            check_symbol_name "$arg"
            symbol=$arg
            ;;
        esac
      done
      [ -n "$symbol" ] || die "usage: remove SYMBOL [--purge] [--force]"
      ;;
  esac
  need_root "$cmd"
  case $cmd in
    install) cmd_install ;;
    status) cmd_status "$symbol" ;;
    list) cmd_list ;;
    logs) cmd_logs "$@" ;;
    restart) cmd_restart "$symbol" ;;
    stop) cmd_stop "$symbol" ;;
    add) cmd_add "$symbol" ;;
    remove) cmd_remove "$symbol" "$purge" "$force" ;;
    uninstall) cmd_uninstall "$@" ;;
  esac
}

main "$@"
