#!/bin/sh
# Build matrix-synapse-py3 stand-ins inside a Debian 13 build root, as the Synapse project
# builds its package (debian/build_virtualenv there): a virtualenv at /opt/venvs/matrix-synapse
# with Synapse's released wheel and the extras "all", generate_config's output with its path
# tweaks as homeserver.yaml, generate_log_config's as log.yaml.
#
# Usage: build.sh NEW_WHEEL OLD_WHEEL SUFFIX   (wheels in this directory; .debs and Packages
# go to ./out).  OLD is the same virtualenv with the older Synapse wheel put in its place: a
# release to upgrade from.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
NEW_WHEEL=$1 OLD_WHEEL=$2 SUFFIX=$3
VENV=/opt/venvs/matrix-synapse
OUT=$HERE/out
export HOME=/root LC_ALL=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1
export CFLAGS=-march=x86-64
SNAKE=$(readlink -e /usr/bin/python3)

rm -rf "$VENV" "$OUT"
mkdir -p "$OUT"
"$SNAKE" -m venv "$VENV"
"$VENV/bin/pip" install --quiet "$HERE/$NEW_WHEEL[all]" systemd-python==235
"$VENV/bin/pip" check

depends_of() {  # depends_of VENV_COPY GREP_ARGS...: packages of the libraries its .so files
    tree=$1         # link to directly (DT_NEEDED, as dpkg-shlibdeps reads them)
    shift
    find "$tree" -name '*.so*' -type f | grep "$@" | while read -r object; do
        needed=$(objdump -p "$object" 2>/dev/null | awk '$1 == "NEEDED" { print $2 }')
        ldd "$object" 2>/dev/null | awk -v needed=" $(echo $needed) " \
            'index(needed, " " $1 " ") && $3 ~ /^\// { print $3 }'
    done | grep -v -e "^$tree" -e "^$VENV" | sort -u \
        | while read -r lib; do dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")"; done \
        | cut -d: -f1 | sort -u | paste -sd, | sed 's/,/, /g'
}

package() {  # package VERSION
    version=$1
    pkg=/tmp/pkg-$version
    rm -rf "$pkg"
    mkdir -p "$pkg/DEBIAN" "$pkg/opt/venvs" "$pkg/etc/matrix-synapse" "$pkg/usr/bin" \
        "$pkg/usr/lib/systemd/system" "$pkg/var/lib/matrix-synapse" "$pkg/var/log/matrix-synapse"
    cp -a "$VENV" "$pkg/opt/venvs/"
    install -m 0755 "$HERE/manage_debconf" "$pkg$VENV/lib/manage_debconf"
    "$VENV/bin/generate_config" --config-dir=/etc/matrix-synapse \
        --data-dir=/var/lib/matrix-synapse \
    | sed -e '/^tls_.*_path:/s/SERVERNAME/homeserver/' \
        -e '/^signing_key_path:/s/SERVERNAME/homeserver/' \
        -e '/^pid_file:/s#:.*#: "/var/run/matrix-synapse.pid"#' \
        -e '/^log_config:/s/SERVERNAME\.log\.config/log.yaml/' \
        -e '/^media_store_path:/s#/media_store#/media#' \
        -e '/^server_name:/s/^/#\n# This is set in \/etc\/matrix-synapse\/conf.d\/server_name.yaml for Debian installations.\n# /' \
        -e '/^# report_stats:/d' \
        > "$pkg/etc/matrix-synapse/homeserver.yaml"
    "$VENV/bin/generate_log_config" --output-file="$pkg/etc/matrix-synapse/log.yaml"
    install -m 0644 "$HERE/matrix-synapse.service" "$pkg/usr/lib/systemd/system/"
    for tool in hash_password register_new_matrix_user synapse_port_db \
        synapse_review_recent_signups synctl update_synapse_database; do
        ln -s "$VENV/bin/$tool" "$pkg/usr/bin/$tool"
    done
    for script in config postinst prerm postrm; do
        install -m 0755 "$HERE/$script" "$pkg/DEBIAN/$script"
    done
    install -m 0644 "$HERE/templates" "$pkg/DEBIAN/templates"
    printf '/etc/matrix-synapse/homeserver.yaml\n/etc/matrix-synapse/log.yaml\n' \
        > "$pkg/DEBIAN/conffiles"
    depends=$(depends_of "$pkg$VENV" -v -e psycopg2 -e pillow.libs)
    recommends=$(depends_of "$pkg$VENV" psycopg2)
    sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)/" \
        -e "s/@PYTHON@/$(basename "$SNAKE")/" -e "s/@DEPENDS@/${depends:+, $depends}/" \
        -e "s/@RECOMMENDS@/$recommends/" "$HERE/control.in" > "$pkg/DEBIAN/control"
    dpkg-deb --root-owner-group -Zgzip -z1 --build "$pkg" "$OUT/" >/dev/null
    rm -rf "$pkg"
}

new_version=$(echo "$NEW_WHEEL" | cut -d- -f2)
old_version=$(echo "$OLD_WHEEL" | cut -d- -f2)
package "$new_version+$SUFFIX"
"$VENV/bin/pip" install --quiet --no-deps --force-reinstall "$HERE/$OLD_WHEEL"
"$VENV/bin/pip" check
package "$old_version+$SUFFIX"
cd "$OUT"
dpkg-scanpackages --multiversion . > Packages 2>/dev/null
apt-ftparchive release . > Release
ls -l "$OUT"
