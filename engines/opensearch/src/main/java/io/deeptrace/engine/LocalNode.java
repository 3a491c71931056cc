package io.deeptrace.engine;

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.opensearch.analysis.common.CommonAnalysisPlugin;
import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.common.unit.TimeValue;
import org.opensearch.env.Environment;
import org.opensearch.index.mapper.MapperExtrasPlugin;
import org.opensearch.index.reindex.ReindexPlugin;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.painless.PainlessPlugin;
import org.opensearch.plugins.Plugin;
import org.opensearch.transport.Netty4Plugin;

/**
 * One local OpenSearch node for DeepTrace demo, tests and CI.
 *
 * <p>Runs the OpenSearch server from its Maven Central artifacts, with the modules
 * that the distribution would load from its modules/ folder passed in as classpath
 * plugins (Node's constructor taking plugin classes is protected, hence the subclass,
 * the same way OpenSearch's own MockNode does it).
 *
 * <p>Usage: {@code LocalNode <home-dir> [http-port] [setting=value ...]}; home-dir and
 * the port fall back to DEEPTRACE_ES_HOME and DEEPTRACE_ES_PORT. Started and stopped by
 * scripts/engines.sh (SIGTERM closes the node cleanly).
 */
public final class LocalNode extends Node {

    /** The modules this node runs with (what the distribution's modules/ folder would add). */
    static final List<Class<? extends Plugin>> MODULES = List.of(
        Netty4Plugin.class,         // HTTP and transport (transport-netty4-client)
        PainlessPlugin.class,       // scripts: painless (lang-painless)
        CommonAnalysisPlugin.class, // analyzers, tokenizers, filters (analysis-common)
        ReindexPlugin.class,        // _delete_by_query, _update_by_query, _reindex (reindex-client)
        MapperExtrasPlugin.class    // scaled_float, token_count, rank_feature, ... (mapper-extras-client)
    );

    private LocalNode(Environment env, Collection<Class<? extends Plugin>> plugins) {
        super(env, plugins, true);
    }

    public static void main(String[] args) throws Exception {
        String homeArg = args.length > 0 ? args[0] : System.getenv("DEEPTRACE_ES_HOME");
        if (homeArg == null || homeArg.isEmpty()) {
            System.err.println("usage: LocalNode <home-dir> [http-port] [setting=value ...]");
            System.exit(2);
        }
        String port = args.length > 1 ? args[1] : System.getenv().getOrDefault("DEEPTRACE_ES_PORT", "9250");

        Path home = Paths.get(homeArg).toAbsolutePath().normalize();
        Path config = home.resolve("config");
        Path data = home.resolve("data");
        Path logs = home.resolve("logs");
        Files.createDirectories(config);
        Files.createDirectories(data);
        Files.createDirectories(logs);
        installLogConfig(config);

        Settings.Builder settings = Settings.builder()
            .put("cluster.name", "deeptrace-local")
            .put("node.name", "deeptrace-local")
            .put("path.home", home.toString())
            .put("path.data", data.toString())
            .put("path.logs", logs.toString())
            // loopback only: HTTP on the given port, transport on an ephemeral port
            .put("network.host", "127.0.0.1")
            .put("http.port", port)
            .put("transport.port", "0")
            .put("discovery.type", "single-node")
            .put("action.auto_create_index", "true")
            .put("http.max_content_length", "256mb")
            .put("indices.query.bool.max_clause_count", "4096")
            // a fuller disk must not flip indices to read-only or stop allocation
            .put("cluster.routing.allocation.disk.threshold_enabled", "false")
            .put("bootstrap.memory_lock", "false");
        for (int i = 2; i < args.length; i++) {
            int eq = args[i].indexOf('=');
            if (eq <= 0) {
                System.err.println("LocalNode: ignoring argument without '=': " + args[i]);
                continue;
            }
            settings.put(args[i].substring(0, eq), args[i].substring(eq + 1));
        }

        Environment env = InternalSettingsPreparer.prepareEnvironment(
            settings.build(), Map.of(), config, () -> "deeptrace-local");

        LogConfigurator.registerErrorListener();
        LogConfigurator.setNodeName("deeptrace-local");
        LogConfigurator.configure(env);

        LocalNode node = new LocalNode(env, MODULES);
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                Files.deleteIfExists(home.resolve("ready"));
                node.close();
                node.awaitClose(30, TimeUnit.SECONDS);
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                stopped.countDown();
            }
        }, "deeptrace-shutdown"));

        Path ready = home.resolve("ready");
        Files.deleteIfExists(ready);
        try {
            node.start();
            // One node: replicas can never be assigned, so indices created without an
            // explicit number_of_replicas default to 0 and health can reach green. This
            // default is read from the cluster state (not node settings): persist it there.
            node.client().admin().cluster().prepareUpdateSettings()
                .setPersistentSettings(Settings.builder().put("cluster.default_number_of_replicas", 0))
                .get(TimeValue.timeValueSeconds(60));
        } catch (Throwable t) {
            System.err.println("LocalNode: start failed: " + t);
            t.printStackTrace();
            System.exit(1);
        }
        // engines.sh waits for this file (holding our pid) besides cluster health
        Files.writeString(ready, ProcessHandle.current().pid() + "\n");
        System.out.println("LocalNode: started, http://127.0.0.1:" + port);
        stopped.await();
    }

    /** Writes the bundled log4j2.properties into the node's config folder (LogConfigurator reads it from there). */
    private static void installLogConfig(Path config) throws IOException {
        try (InputStream in = LocalNode.class.getResourceAsStream("/deeptrace-log4j2.properties")) {
            if (in == null) {
                throw new IOException("deeptrace-log4j2.properties missing from the classpath");
            }
            Files.copy(in, config.resolve("log4j2.properties"), StandardCopyOption.REPLACE_EXISTING);
        }
    }
}
