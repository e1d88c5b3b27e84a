// Sends one record per key (read from stdin, one a line) with Kafka's Java producer and its
// default partitioner, and prints "<key> <partition>" as the broker acknowledged it.
// Usage: java -cp '<kafka libs>/*' KeyedSend.java <client.properties> <topic>
import java.io.BufferedReader;
import java.io.FileReader;
import java.io.InputStreamReader;
import java.util.Properties;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.StringSerializer;

public class KeyedSend {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        try (FileReader config = new FileReader(args[0])) {
            props.load(config);
        }
        props.put("key.serializer", StringSerializer.class.getName());
        props.put("value.serializer", StringSerializer.class.getName());
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(props)) {
            String key;
            while ((key = in.readLine()) != null) {
                RecordMetadata sent = producer.send(new ProducerRecord<>(args[1], key, key)).get();
                System.out.println(key + " " + sent.partition());
            }
        }
    }
}
