import java.io.IOException;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Arrays;
import java.util.Collection;
import java.util.Collections;
import java.util.List;
import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;

/**
 * A single OpenSearch node with the modules a distribution ships as plugins, loaded from
 * the classpath instead of a plugins folder.
 *
 * <p>Arguments: the node's home folder, then any number of {@code key=value} node settings.
 * The node stops, cleanly, when its standard input closes: the process that started it
 * holds the other end, so a parent that dies by SIGKILL still takes the node with it.
 */
public final class EngineNode extends Node {
    private static final List<Class<? extends Plugin>> MODULES = Arrays.asList(
        org.opensearch.transport.Netty4Plugin.class,
        org.opensearch.analysis.common.CommonAnalysisPlugin.class,
        org.opensearch.index.mapper.MapperExtrasPlugin.class,
        org.opensearch.painless.PainlessPlugin.class,
        org.opensearch.join.ParentJoinPlugin.class,
        org.opensearch.index.reindex.ReindexPlugin.class,
        org.opensearch.ingest.common.IngestCommonPlugin.class);

    private EngineNode(Environment environment, Collection<Class<? extends Plugin>> plugins) {
        super(environment, plugins, true);
    }

    public static void main(String[] args) throws Exception {
        Path home = Paths.get(args[0]).toAbsolutePath();
        Settings.Builder builder = Settings.builder()
            .put("path.home", home.toString())
            .put("path.data", home.resolve("data").toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("cluster.name", "indexsync-engine")
            .put("node.name", "engine-node")
            .put("discovery.type", "single-node")
            .put("network.host", "127.0.0.1")
            .put("http.port", "0")
            .put("transport.port", "0")
            // The bound HTTP port goes to logs/http.ports: no port is guessed, so none races.
            .put("node.portsfile", true)
            // Tests fill small disks; the disk watermarks would block writes on their own.
            .put("cluster.routing.allocation.disk.threshold_enabled", false);
        for (int i = 1; i < args.length; i++) {
            int eq = args[i].indexOf('=');
            if (eq <= 0) {
                throw new IllegalArgumentException("expected key=value, got " + args[i]);
            }
            builder.put(args[i].substring(0, eq), args[i].substring(eq + 1));
        }
        Settings settings = builder.build();
        LogConfigurator.registerErrorListener();
        LogConfigurator.configureWithoutConfig(settings);
        Environment environment = InternalSettingsPreparer.prepareEnvironment(
            settings, Collections.emptyMap(), null, () -> "engine-node");
        Node node = new EngineNode(environment, MODULES);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
            } catch (IOException e) {
                e.printStackTrace();
            }
        }, "engine-node-shutdown"));
        node.start();
        // The node's own threads are daemons: main keeps the JVM alive until stdin ends.
        try {
            while (System.in.read() != -1) {
                // Anything written to stdin is ignored; only its end matters.
            }
        } catch (IOException e) {
            // A broken pipe is an end too.
        }
        System.exit(0);
    }
}
