package main

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// Addresses and credentials of the servers servers.sh starts.
const (
	redisAddr    = "127.0.0.1:16379"
	redisPass    = "s3cret-redis"
	mysqlAddr    = "127.0.0.1:13306"
	mysqlUser    = "dt"
	mysqlPass    = "s3cret-mysql"
	postgresAddr = "127.0.0.1:15432"
	postgresUser = "dt"
	postgresPass = "s3cret-pg"
)

func init() {
	scenarios["redis"] = func() (string, func(context.Context, string) error, func()) {
		return redisAddr, runGoRedis, nil
	}
	scenarios["redis-cli"] = func() (string, func(context.Context, string) error, func()) {
		return redisAddr, runRedisCLI, nil
	}
	scenarios["mysql"] = func() (string, func(context.Context, string) error, func()) {
		return mysqlAddr, runMySQL, nil
	}
	scenarios["mysql-cli"] = func() (string, func(context.Context, string) error, func()) {
		return mysqlAddr, runMySQLCLI, nil
	}
	scenarios["postgres"] = func() (string, func(context.Context, string) error, func()) {
		return postgresAddr, runPostgres, nil
	}
	scenarios["psql"] = func() (string, func(context.Context, string) error, func()) {
		return postgresAddr, runPsql, nil
	}
}

func runGoRedis(ctx context.Context, addr string) error {
	// go-redis speaks RESP3 (HELLO 3 with AUTH) by default.
	rdb := redis.NewClient(&redis.Options{Addr: addr, Password: redisPass, PoolSize: 1, Protocol: 3})
	defer rdb.Close()
	if err := rdb.Set(ctx, "user:42", "ada", time.Minute).Err(); err != nil {
		return err
	}
	if err := rdb.Get(ctx, "user:42").Err(); err != nil {
		return err
	}
	if err := rdb.Get(ctx, "user:missing").Err(); err != redis.Nil {
		return fmt.Errorf("want nil, got %v", err)
	}
	rdb.HSet(ctx, "order:7", "item", "book", "qty", 2)
	if err := rdb.HGetAll(ctx, "order:7").Err(); err != nil {
		return err
	}
	rdb.SAdd(ctx, "tags:7", "a", "b")
	if err := rdb.SMembers(ctx, "tags:7").Err(); err != nil {
		return err
	}
	rdb.Set(ctx, "pi", "3.14", 0)
	rdb.IncrByFloat(ctx, "pi", 1)
	// A big value: its bulk string spans several reads.
	rdb.Set(ctx, "blob", strings.Repeat("b", 200000), 0)
	rdb.Get(ctx, "blob")
	// Error reply.
	if err := rdb.Do(ctx, "INCR", "user:42").Err(); err == nil {
		return fmt.Errorf("want an error from INCR on a string")
	}
	// Pipelining.
	pipe := rdb.Pipeline()
	for i := 0; i < 5; i++ {
		pipe.Incr(ctx, fmt.Sprintf("counter:%d", i))
	}
	pipe.Get(ctx, "user:42")
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	// MULTI/EXEC.
	if _, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Incr(ctx, "counter:0")
		p.Expire(ctx, "counter:0", time.Hour)
		return nil
	}); err != nil {
		return err
	}
	rdb.Do(ctx, "DEBUG", "PROTOCOL", "bignum")
	rdb.Do(ctx, "DEBUG", "PROTOCOL", "verbatim")
	rdb.Do(ctx, "DEBUG", "PROTOCOL", "attrib")
	rdb.Do(ctx, "DEBUG", "PROTOCOL", "double")
	rdb.Do(ctx, "DEBUG", "PROTOCOL", "null")

	// Pub/sub on a second connection: pushes are not replies.
	sub := redis.NewClient(&redis.Options{Addr: addr, Password: redisPass, PoolSize: 1, Protocol: 3})
	defer sub.Close()
	ps := sub.Subscribe(ctx, "news")
	if _, err := ps.Receive(ctx); err != nil {
		return err
	}
	for i := 0; i < 3; i++ {
		rdb.Publish(ctx, "news", fmt.Sprintf("hello %d", i))
	}
	for i := 0; i < 3; i++ {
		if _, err := ps.ReceiveMessage(ctx); err != nil {
			return err
		}
	}
	ps.Close()
	return rdb.Ping(ctx).Err()
}

func runRedisCLI(ctx context.Context, addr string) error {
	host, port, _ := net.SplitHostPort(addr)
	script := "AUTH " + redisPass + "\nSET session:abc123 x\nGET session:abc123\nLPUSH q 1 2 3\nLRANGE q 0 -1\nDEL q\nNOSUCHCMD\nGET nothing\n"
	cmd := exec.CommandContext(ctx, "redis-cli", "-h", host, "-p", port)
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("redis-cli: %v: %s", err, out)
	}
	return nil
}

func runMySQL(ctx context.Context, addr string) error {
	cfg := mysql.NewConfig()
	cfg.User, cfg.Passwd, cfg.Net, cfg.Addr, cfg.DBName = mysqlUser, mysqlPass, "tcp", addr, "shop"
	cfg.AllowNativePasswords = true
	db, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if err := db.PingContext(ctx); err != nil {
		return err
	}
	steps := []string{
		"DROP TABLE IF EXISTS users",
		"CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(64), email VARCHAR(128))",
		"INSERT INTO users VALUES (1,'ada','ada@example.com'),(2,'bob','bob@example.com'),(42,'eve','eve@example.com')",
	}
	for _, s := range steps {
		if _, err := db.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	// Text protocol (COM_QUERY) result set.
	if err := drain(db.QueryContext(ctx, "SELECT id, name FROM users WHERE id < 10")); err != nil {
		return err
	}
	// Prepared statement: COM_STMT_PREPARE + COM_STMT_EXECUTE + CLOSE.
	if err := drain(db.QueryContext(ctx, "SELECT name, email FROM users WHERE id = ?", 42)); err != nil {
		return err
	}
	st, err := db.PrepareContext(ctx, "UPDATE users SET name = ? WHERE id = ?")
	if err != nil {
		return err
	}
	for i := 1; i <= 2; i++ {
		if _, err := st.ExecContext(ctx, fmt.Sprintf("n%d", i), i); err != nil {
			return err
		}
	}
	st.Close()
	// An error.
	if _, err := db.ExecContext(ctx, "SELECT * FROM no_such_table"); err == nil {
		return fmt.Errorf("want an error")
	}
	// A bigger result set.
	if err := drain(db.QueryContext(ctx, "SELECT REPEAT('r', 1000) AS r FROM information_schema.columns LIMIT 300")); err != nil {
		return err
	}
	return db.PingContext(ctx)
}

func runMySQLCLI(ctx context.Context, addr string) error {
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.CommandContext(ctx, "mariadb", "-h", host, "-P", port, "-u", mysqlUser, "-p"+mysqlPass, "--ssl=0", "shop", "--force",
		"-e", "SELECT id, name FROM users WHERE id = 42; SELECT 1; UPDATE users SET name = 'x' WHERE id = 1; SELECT * FROM nope")
	out, err := cmd.CombinedOutput()
	if err != nil && !strings.Contains(string(out), "nope") {
		return fmt.Errorf("mariadb: %v: %s", err, out)
	}
	return nil
}

func drain(rows *sql.Rows, err error) error {
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
	}
	return rows.Err()
}

func runPostgres(ctx context.Context, addr string) error {
	host, port, _ := net.SplitHostPort(addr)
	url := fmt.Sprintf("postgres://%s:%s@%s:%s/shop?sslmode=prefer", postgresUser, postgresPass, host, port)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for _, s := range []string{
		"DROP TABLE IF EXISTS users",
		"CREATE TABLE users (id int PRIMARY KEY, name text, email text)",
		"INSERT INTO users VALUES (1,'ada','ada@example.com'),(2,'bob','bob@example.com'),(42,'eve','eve@example.com')",
	} {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	// Extended protocol, named prepared statement (pgx caches statements).
	for _, id := range []int{42, 1, 42} {
		var name string
		if err := conn.QueryRow(ctx, "SELECT name FROM users WHERE id = $1", id).Scan(&name); err != nil {
			return err
		}
	}
	// Extended protocol, unnamed statement.
	rows, err := conn.Query(ctx, "SELECT id, email FROM users WHERE name <> $1", pgx.QueryExecModeExec, "zed")
	if err != nil {
		return err
	}
	rows.Close()
	// Simple protocol.
	rows, err = conn.Query(ctx, "SELECT id FROM users ORDER BY id", pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return err
	}
	rows.Close()
	// An error in the extended protocol.
	if _, err := conn.Exec(ctx, "SELECT * FROM no_such_table WHERE id = $1", 1); err == nil {
		return fmt.Errorf("want an error")
	}
	// A batch: several Parse/Bind/Execute, one Sync.
	b := &pgx.Batch{}
	b.Queue("UPDATE users SET name = $1 WHERE id = $2", "n1", 1)
	b.Queue("SELECT count(*) FROM users")
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return err
	}
	// A transaction.
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	tx.Exec(ctx, "DELETE FROM users WHERE id = $1", 2)
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	rows, err = conn.Query(ctx, "SELECT repeat('r', 1000) FROM generate_series(1, 300)")
	if err != nil {
		return err
	}
	for rows.Next() {
	}
	rows.Close()
	return conn.Ping(ctx)
}

func runPsql(ctx context.Context, addr string) error {
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.CommandContext(ctx, "psql", "-h", host, "-p", port, "-U", postgresUser, "-d", "shop", "-v", "ON_ERROR_STOP=0",
		"-c", "SELECT id, name FROM users WHERE id = 42", "-c", "SELECT 1/0", "-c", "BEGIN; UPDATE users SET email = 'x@example.com' WHERE id = 1; COMMIT;")
	cmd.Env = append(cmd.Environ(), "PGPASSWORD="+postgresPass, "PGSSLMODE=disable")
	out, err := cmd.CombinedOutput()
	if err != nil && !strings.Contains(string(out), "division by zero") {
		return fmt.Errorf("psql: %v: %s", err, out)
	}
	return nil
}
