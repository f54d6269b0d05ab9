// A plain Java producer, for records kafka-python refuses to write (a null key with a null value) but
// any Java or librdkafka producer writes without complaint. Run in source-file mode by the tests:
//   java -cp '<kafka jars>/*' tests/RawProducer.java BOOTSTRAP TOPIC < records
// One record a line: KEY VALUE [HEADER_NAME=HEADER_VALUE ...], each field "x" and its hex digits, "-" for null.
// All records go to partition 0, in order; it exits non-zero unless every one was acknowledged.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.header.internals.RecordHeader;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class RawProducer {
    private static byte[] decode(String field) {
        return field.equals("-") ? null : HexFormat.of().parseHex(field.substring(1));
    }

    public static void main(String[] args) throws Exception {
        Properties settings = new Properties();
        settings.put("bootstrap.servers", args[0]);
        settings.put("acks", "all");
        settings.put("max.request.size", String.valueOf(4 * 1024 * 1024));
        settings.put("key.serializer", ByteArraySerializer.class.getName());
        settings.put("value.serializer", ByteArraySerializer.class.getName());
        List<Future<RecordMetadata>> sent = new ArrayList<>();
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(settings);
             BufferedReader input = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.US_ASCII))) {
            String line;
            while ((line = input.readLine()) != null) {
                String[] fields = line.split(" ");
                List<org.apache.kafka.common.header.Header> headers = new ArrayList<>();
                for (int i = 2; i < fields.length; i++) {
                    String[] header = fields[i].split("=", -1);
                    headers.add(new RecordHeader(new String(decode(header[0]), StandardCharsets.UTF_8), decode(header[1])));
                }
                sent.add(producer.send(new ProducerRecord<>(args[1], 0, decode(fields[0]), decode(fields[1]), headers)));
                producer.flush();  // one record a batch: a refused large one cannot take its neighbours with it
            }
            for (Future<RecordMetadata> future : sent) {
                future.get(60, TimeUnit.SECONDS);
            }
        }
    }
}
