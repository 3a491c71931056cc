#!/bin/sh
# servers.sh start|stop: run Debian's redis-server, PostgreSQL and MariaDB on
# loopback, non-default ports, data under /tmp, for cmd/record.
#   apt-get install redis-server redis-tools postgresql postgresql-client mariadb-server mariadb-client
set -e
D=/tmp/deeptrace-record
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
case "$1" in
start)
	mkdir -p $D/redis $D/mysql $D/pg
	redis-server --bind 127.0.0.1 --port 16379 --dir $D/redis --requirepass s3cret-redis \
		--enable-debug-command yes --daemonize yes --pidfile $D/redis.pid --logfile $D/redis.log
	if [ ! -d $D/mysql/mysql ]; then
		mariadb-install-db --user=root --datadir=$D/mysql --auth-root-authentication-method=normal >$D/mysql-init.log 2>&1
	fi
	mariadbd --user=root --datadir=$D/mysql --bind-address=127.0.0.1 --port=13306 \
		--socket=$D/mysql.sock --pid-file=$D/mysql.pid --skip-grant-tables=0 >$D/mysql.log 2>&1 &
	chown -R postgres $D/pg
	if [ ! -f $D/pg/PG_VERSION ]; then
		echo s3cret-pg > $D/pgpass && chown postgres $D/pgpass
		su postgres -c "$PGBIN/initdb -D $D/pg -U dt --pwfile=$D/pgpass -A scram-sha-256" >$D/pg-init.log
	fi
	su postgres -c "$PGBIN/pg_ctl -D $D/pg -l $D/pg/server.log -o '-p 15432 -k /tmp -c listen_addresses=127.0.0.1' start" >/dev/null
	for i in $(seq 50); do [ -S $D/mysql.sock ] && break; sleep 0.2; done
	mariadb --socket=$D/mysql.sock -uroot -e "CREATE DATABASE IF NOT EXISTS shop; CREATE USER IF NOT EXISTS 'dt'@'127.0.0.1' IDENTIFIED BY 's3cret-mysql'; GRANT ALL ON shop.* TO 'dt'@'127.0.0.1';"
	PGPASSWORD=s3cret-pg psql -h 127.0.0.1 -p 15432 -U dt -d postgres -tc "SELECT 1 FROM pg_database WHERE datname='shop'" | grep -q 1 ||
		PGPASSWORD=s3cret-pg psql -h 127.0.0.1 -p 15432 -U dt -d postgres -c "CREATE DATABASE shop"
	;;
stop)
	[ -f $D/redis.pid ] && kill $(cat $D/redis.pid) || true
	[ -f $D/mysql.pid ] && kill $(cat $D/mysql.pid) || true
	su postgres -c "$PGBIN/pg_ctl -D $D/pg stop" >/dev/null || true
	;;
*)
	echo "usage: $0 start|stop" >&2; exit 2
	;;
esac
